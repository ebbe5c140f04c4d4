//! `lopper inspect`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use lopper::count::count;
use lopper::data::DatasetName;
use lopper::prune::weights::SparsityReport;
use lopper::train::RunDir;

use super::common::JsonFlag;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A zoo model name.
    #[arg(long, conflicts_with = "run")]
    pub model: Option<String>,
    /// A run folder: inspect its (possibly pruned) model.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Size the zoo model for this data set (default: mnist for mlp/lenet5, else cifar10).
    #[arg(long, conflicts_with = "input_shape")]
    pub dataset: Option<DatasetName>,
    /// Size the zoo model for this per-sample input shape, e.g. 3,32,32.
    #[arg(long, value_delimiter = ',')]
    pub input_shape: Option<Vec<usize>>,
    /// Number of classes of the zoo model.
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Show the channel groups (channels removed together) instead of the layer table.
    #[arg(long)]
    pub groups: bool,
    /// With --groups: nodes whose channels must stay, comma-separated.
    #[arg(long, value_delimiter = ',', requires = "groups")]
    pub protect: Vec<String>,
    /// List the zoo's models.
    #[arg(long)]
    pub list: bool,
    /// Prints the counts (totals under "macs" and "params") or the groups.
    #[command(flatten)]
    pub json: JsonFlag,
}

pub fn run(a: InspectArgs) -> Result<()> {
    if a.list {
        for m in lopper::zoo::MODEL_NAMES {
            println!("{m}");
        }
        return Ok(());
    }
    let mut sparsity = None;
    let graph = match (&a.model, &a.run) {
        (Some(name), None) => {
            let shape = match (&a.input_shape, a.dataset) {
                (Some(s), _) if s.len() == 3 => s.clone(),
                (Some(s), _) => bail!(
                    "--input-shape takes three numbers, channels,height,width (e.g. 3,32,32), not {} value(s)",
                    s.len()
                ),
                (None, d) => d
                    .unwrap_or_else(|| DatasetName::default_for_model(name))
                    .input_shape()
                    .to_vec(),
            };
            lopper::zoo::build(name, &shape, a.classes)?
        }
        (None, Some(dir)) => {
            let run = RunDir::new(dir);
            // A weight-pruned run: its zeros, counted on the weights.
            let record = dir.join(lopper::prune::session::SPARSITY_FILE);
            if record.exists() {
                let model = run
                    .load_model(&lopper::device::device("cpu")?)
                    .with_context(|| format!("cannot inspect {}", dir.display()))?;
                sparsity = Some(SparsityReport::read(&record)?.recount(&model)?);
            }
            lopper::model::read_architecture(&run.arch_path())
                .with_context(|| format!("cannot inspect {}", dir.display()))?
        }
        _ => bail!("give --model NAME or --run DIR (or --list)"),
    };
    if a.groups {
        return print_groups(&graph, &a.protect, a.json.json);
    }
    let counts = count(&graph);
    if a.json.json {
        #[derive(serde::Serialize)]
        struct Inspected<'a> {
            #[serde(flatten)]
            counts: &'a lopper::count::ModelCount,
            #[serde(skip_serializing_if = "Option::is_none")]
            sparsity: &'a Option<SparsityReport>,
        }
        let out = Inspected {
            counts: &counts,
            sparsity: &sparsity,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("model {} ({} nodes)", graph.name, graph.nodes.len());
        print!("{}", counts.table());
        if let Some(r) = &sparsity {
            println!(
                "\nweight sparsity ({}): {:.2}% of the pruned layers' weights are zero",
                r.pattern,
                100.0 * r.sparsity
            );
            print!("{}", r.markdown());
        }
    }
    Ok(())
}

fn print_groups(graph: &lopper::graph::Graph, protect: &[String], json: bool) -> Result<()> {
    let groups = lopper::prune::channel_groups(graph, protect)?;
    if json {
        #[derive(serde::Serialize)]
        struct Row<'a> {
            id: usize,
            channels: usize,
            producers: String,
            members: Vec<(String, lopper::prune::Role)>,
            protected: &'a Option<String>,
        }
        let rows: Vec<Row> = groups
            .iter()
            .map(|g| Row {
                id: g.id,
                channels: g.channels,
                producers: g.label(graph),
                members: g
                    .members
                    .iter()
                    .map(|m| (graph.nodes[m.node].name.clone(), m.role))
                    .collect(),
                protected: &g.protected,
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let prunable = groups.iter().filter(|g| g.is_prunable()).count();
    println!(
        "model {}: {} channel groups, {prunable} prunable",
        graph.name,
        groups.len()
    );
    println!(
        "{:>3} {:>8}  {:<10} producers (layers that make the channels) / members",
        "id", "channels", "status"
    );
    for g in &groups {
        let status = if g.is_prunable() {
            "prunable"
        } else {
            "protected"
        };
        println!(
            "{:>3} {:>8}  {:<10} {}",
            g.id,
            g.channels,
            status,
            g.label(graph)
        );
        if let Some(why) = &g.protected {
            println!("{:>24}  {why}", "");
        }
        let others: Vec<String> = g
            .members
            .iter()
            .filter(|m| m.role != lopper::prune::Role::Producer)
            .map(|m| format!("{} ({:?})", graph.nodes[m.node].name, m.role).to_lowercase())
            .collect();
        if !others.is_empty() {
            println!("{:>24}  also: {}", "", others.join(", "));
        }
    }
    Ok(())
}
