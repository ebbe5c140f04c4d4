//! The pruning report: where lopper cut and what it cost, as JSON and Markdown.

use std::path::Path;

use serde::Serialize;

use super::methods::History;
use super::weights::SparsityReport;
use crate::count::human;
use crate::error::Result;

/// Channels of one group before and after.
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    pub id: usize,
    pub producers: String,
    pub before: usize,
    pub after: usize,
}

/// A measured figure before and after pruning.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BeforeAfter {
    pub before: f64,
    pub after: f64,
}

impl BeforeAfter {
    pub fn ratio(&self) -> f64 {
        self.after / self.before
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub model: String,
    pub method: String,
    pub allocation: String,
    pub budget: String,
    /// The budget in absolute units (MACs, parameters or ms) and the pruned model's cost in
    /// the same units (counted on the pruned graph; for latency, the profile's prediction).
    pub budget_limit: f64,
    pub budget_cost: f64,
    pub budget_met: bool,
    /// DSA from scratch: "dense" is then the randomly initialised model.
    pub from_scratch: bool,
    /// Continued with `--resume`: the wall times then cover the resumed process only (the
    /// allocation time is the one recorded when it finished).
    #[serde(default)]
    pub resumed: bool,
    pub macs: BeforeAfter,
    pub params: BeforeAfter,
    /// Test top-1 of the dense model, of the pruned model before fine-tuning, and after.
    pub top1_dense: f64,
    pub top1_pruned: f64,
    pub top1_finetuned: Option<f64>,
    pub finetune_epochs: usize,
    /// Training batches the BatchNorm statistics were re-estimated on before the "pruned"
    /// evaluation (0: the unpruned network's statistics).
    #[serde(default)]
    pub bn_batches: usize,
    /// Median forward latency in milliseconds (eval mode, on the run's device).
    pub latency_ms_batch1: BeforeAfter,
    pub latency_ms_batch64: BeforeAfter,
    pub groups: Vec<GroupReport>,
    /// What the user should look at before trusting the result (a residual stream cut to one
    /// channel).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Why the result is useless, when it is: accuracy at chance level, or a method phase
    /// whose training loss rose to chance level. `lopper prune` then exits with an error.
    #[serde(default)]
    pub collapsed: Option<String>,
    /// For a weight budget: per layer and in total, the weights and MACs that are non-zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<SparsityReport>,
    /// Wall time of finding the widths (one-shot scoring, DSA's allocation epochs, or the
    /// iterative loop with its brief fine-tuning), of the final fine-tuning, and in total.
    pub allocation_seconds: f64,
    pub finetune_seconds: f64,
    pub seconds: f64,
}

impl PruneReport {
    /// Why this result must not pass as a success (exit status 0), if it must not: a collapse
    /// to chance accuracy, or a missed budget (a latency measured over it). The result and its
    /// report are kept either way.
    pub fn failure(&self) -> Option<String> {
        if let Some(why) = &self.collapsed {
            return Some(format!(
                "the pruned model collapsed: {why}. Try a gentler budget, more fine-tuning (--finetune-epochs), a lower weight rate for DSA (--dsa-lr) or another method"
            ));
        }
        if !self.budget_met {
            return Some(format!(
                "the pruned model misses the budget {} (cost {:.4e} over the limit {:.4e})",
                self.budget, self.budget_cost, self.budget_limit
            ));
        }
        None
    }

    /// The keep-ratio bar chart in `out` (`keep_ratios.{svg,png}`), or for a weight budget the
    /// share of each layer's weights that are zero (`weight_sparsity.{svg,png}`); and the
    /// method's history over its run where it has one (DSA's keep ratios, PDP's sparsities).
    pub fn write_plots(&self, out: &Path, history: Option<&History>) -> Result<()> {
        if let Some(h) = history {
            crate::plot::Lines {
                title: format!("{}: {} ({})", self.model, h.title, self.budget),
                x_label: h.x_label.clone(),
                y_label: h.y_label.clone(),
                series: h.series.clone(),
            }
            .write(&out.join(&h.file))?;
        }
        if let Some(r) = &self.sparsity {
            crate::plot::RatioBars {
                title: format!(
                    "{}: zero weights per layer ({}, {}, {})",
                    self.model, self.method, self.allocation, self.budget
                ),
                x_label: "sparsity (share of the layer's weights that are zero)".into(),
                items: r
                    .layers
                    .iter()
                    .map(|l| (format!("{} ({})", l.name, l.pattern), l.sparsity()))
                    .collect(),
            }
            .write(&out.join("weight_sparsity"))?;
            return Ok(());
        }
        crate::plot::RatioBars {
            title: format!(
                "{}: kept channels per group ({}, {}, {})",
                self.model, self.method, self.allocation, self.budget
            ),
            x_label: "keep ratio (channels after / before)".into(),
            items: self
                .groups
                .iter()
                .map(|g| {
                    (
                        format!("g{} {}", g.id, g.producers),
                        g.after as f64 / g.before as f64,
                    )
                })
                .collect(),
        }
        .write(&out.join("keep_ratios"))?;
        Ok(())
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let pct = |x: f64| format!("{:.2}%", 100.0 * x);
        let mut s = format!(
            "# Pruning report: {} ({} importance, {} allocation, budget {})\n\n",
            self.model, self.method, self.allocation, self.budget
        );
        s += "| | before | after | after / before |\n|---|---|---|---|\n";
        s += &format!(
            "| MACs (FLOPs = 2 x MACs) | {} | {} | {:.3} |\n",
            human(self.macs.before as u64),
            human(self.macs.after as u64),
            self.macs.ratio()
        );
        s += &format!(
            "| parameters | {} | {} | {:.3} |\n",
            human(self.params.before as u64),
            human(self.params.after as u64),
            self.params.ratio()
        );
        for (batch, l) in [(1, &self.latency_ms_batch1), (64, &self.latency_ms_batch64)] {
            s += &format!(
                "| latency, batch {batch} (ms) | {:.3} | {:.3} | {:.3} (speed-up {:.2}x) |\n",
                l.before,
                l.after,
                l.ratio(),
                1.0 / l.ratio()
            );
        }
        s += &match self.sparsity.as_ref().map(|r| r.pattern) {
            Some(super::weights::Pattern::NM { m, .. }) => format!(
                "\nBudget met: {} (at most {} non-zeros in a group of {m} of the pruned layers, {} allowed).\n\n",
                self.budget_met, self.budget_cost, self.budget_limit
            ),
            Some(super::weights::Pattern::Unstructured) => format!(
                "\nBudget met: {} ({} non-zero weights in the pruned layers, {} allowed).\n\n",
                self.budget_met, self.budget_cost, self.budget_limit
            ),
            None => format!(
                "\nBudget met: {} (cost {:.6e}, limit {:.6e}).\n\n",
                self.budget_met, self.budget_cost, self.budget_limit
            ),
        };
        if let Some(c) = &self.collapsed {
            s += &format!("**Collapsed:** {c}\n\n");
        }
        if let Some(r) = &self.sparsity {
            s += &format!(
                "## Weight sparsity\n\n{}: {:.2}% of the pruned layers' weights are zero; {} of {} MACs have a non-zero weight.\n\n",
                r.pattern,
                100.0 * r.sparsity,
                human(r.nonzero_macs),
                human(r.macs)
            );
            s += &r.markdown();
            s += "\n";
        }
        for w in &self.warnings {
            s += &format!("**Warning:** {w}\n\n");
        }
        s += &format!(
            "Test top-1: dense {}, pruned {} before fine-tuning{}, {} after {} fine-tuning epoch(s).\n\n",
            pct(self.top1_dense),
            pct(self.top1_pruned),
            if self.bn_batches > 0 {
                format!(
                    " (BatchNorm statistics re-estimated on {} batches)",
                    self.bn_batches
                )
            } else {
                String::new()
            },
            self.top1_finetuned.map_or("—".into(), pct),
            self.finetune_epochs
        );
        s += &format!(
            "Wall time: {:.1} s finding the {}, {:.1} s fine-tuning, {:.1} s in total{}.\n\n",
            self.allocation_seconds,
            if self.sparsity.is_some() {
                "masks"
            } else {
                "widths"
            },
            self.finetune_seconds,
            self.seconds,
            if self.resumed {
                " (resumed with --resume: fine-tuning and the total cover the last process only)"
            } else {
                ""
            }
        );
        if self.sparsity.is_some() {
            // The per-layer table is above; the channels are all kept.
            s += "## Zero weights per layer\n\n![sparsity per layer](weight_sparsity.svg)\n";
            return s;
        }
        s += "## Channels per group\n\n![keep ratio per group](keep_ratios.svg)\n\n| group | producers | before | after | kept |\n|---|---|---|---|---|\n";
        for g in &self.groups {
            s += &format!(
                "| {} | {} | {} | {} | {:.2} |\n",
                g.id,
                g.producers,
                g.before,
                g.after,
                g.after as f64 / g.before as f64
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::{BeforeAfter, PruneReport};

    fn report(cost: f64, limit: f64, collapsed: Option<String>) -> PruneReport {
        let same = BeforeAfter {
            before: 1.0,
            after: 1.0,
        };
        PruneReport {
            model: "lenet5".into(),
            method: "l1".into(),
            allocation: "uniform".into(),
            budget: "latency=0.5".into(),
            budget_limit: limit,
            budget_cost: cost,
            budget_met: cost <= limit,
            from_scratch: false,
            resumed: false,
            macs: same,
            params: same,
            top1_dense: 0.99,
            top1_pruned: 0.9,
            top1_finetuned: Some(0.98),
            finetune_epochs: 1,
            bn_batches: 0,
            latency_ms_batch1: same,
            latency_ms_batch64: same,
            groups: vec![],
            warnings: vec![],
            collapsed,
            sparsity: None,
            allocation_seconds: 1.0,
            finetune_seconds: 1.0,
            seconds: 2.0,
        }
    }

    /// A latency measured over the budget, or a collapse, is a failure (`lopper prune` exits
    /// non-zero on it); a result within the budget is not.
    #[test]
    fn a_missed_budget_or_a_collapse_is_a_failure() {
        assert_eq!(report(0.5, 0.5, None).failure(), None);
        let missed = report(0.61, 0.5, None).failure().unwrap();
        assert!(
            missed.contains("misses the budget latency=0.5") && missed.contains("6.1000e-1"),
            "{missed}"
        );
        let collapsed = report(0.4, 0.5, Some("top-1 10.00% is chance".into()))
            .failure()
            .unwrap();
        assert!(collapsed.contains("collapsed: top-1 10.00%"), "{collapsed}");
    }
}
