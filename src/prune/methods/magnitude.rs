//! One-shot magnitude pruning of weights: score every weight of the masked layers by |w|,
//! spread the sparsity over the layers (uniform, global or ERK; or N:M in every layer), zero
//! the rest. The session then fine-tunes with the masks frozen.

use serde::{Deserialize, Serialize};

use super::{Flow, MethodContext, MethodOutcome, PruneMethod};
use crate::error::{LopperError, Result};
use crate::model::Model;
use crate::prune::importance::{Criterion, Importance};
use crate::prune::weights::{Density, WeightBudget, WeightMasks, solve_masks, weight_layers};

/// Settings of magnitude pruning.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MagnitudePlan {
    /// How an unstructured sparsity is spread over the layers [default: uniform]; none for an
    /// N:M budget, which puts every masked layer at the pattern.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Density>,
}

impl MagnitudePlan {
    pub(crate) fn check(&self, flow: &Flow) -> Result<()> {
        if flow.from_scratch {
            return Err(LopperError::Config(
                "magnitude pruning starts from a trained run (--run DIR); from scratch use --method gmp".into(),
            ));
        }
        Ok(())
    }
}

pub struct Magnitude {
    pub plan: MagnitudePlan,
}

/// Masks for `budget` from the |w| of `model`'s masked layers, on a fresh mask set.
pub(crate) fn magnitude_masks(
    model: &Model,
    masks: &mut WeightMasks,
    budget: WeightBudget,
    density: Density,
) -> Result<()> {
    let criterion: Box<dyn Importance> = Criterion::L1.build(0);
    let masked: Vec<_> = masks.layers().iter().filter(|l| l.is_masked()).collect();
    let scores = masked
        .iter()
        .map(|l| criterion.weight_scores(model, l.node))
        .collect::<Result<Vec<_>>>()?;
    let solved = solve_masks(&masked, &scores, budget, density);
    masks.set(solved)
}

/// The masks sparse training starts from (RigL, IEE), at `density`: one-shot magnitude masks
/// of a trained run, or seeded random masks from scratch (the sparse initialisation RigL's
/// paper uses); with the model to train, its masked weights zeroed.
pub(crate) fn sparse_start(
    cx: &MethodContext,
    budget: WeightBudget,
    density: Density,
    salt: u64,
) -> Result<(WeightMasks, Model)> {
    use rand::{Rng, SeedableRng};
    let layers = weight_layers(&cx.dense.graph, cx.protect, budget.pattern())?;
    let mut masks = WeightMasks::new(&cx.dense.graph, layers, cx.device);
    if cx.flow.from_scratch {
        let mut rng =
            rand::rngs::StdRng::seed_from_u64(crate::data::seed_mix(&[cx.cfg.seed, salt]));
        let masked: Vec<_> = masks.layers().iter().filter(|l| l.is_masked()).collect();
        let scores: Vec<Vec<f64>> = masked
            .iter()
            .map(|l| (0..l.numel()).map(|_| rng.random::<f64>()).collect())
            .collect();
        let random = solve_masks(&masked, &scores, budget, density);
        masks.set(random)?;
    } else {
        magnitude_masks(cx.dense, &mut masks, budget, density)?;
    }
    let start = masks.apply(cx.dense.clone(), None)?;
    Ok((masks, start))
}

impl PruneMethod for Magnitude {
    fn prune(&mut self, cx: &mut MethodContext) -> Result<MethodOutcome> {
        let budget = cx.weight_budget()?;
        let layers = weight_layers(&cx.dense.graph, cx.protect, budget.pattern())?;
        let mut masks = WeightMasks::new(&cx.dense.graph, layers, cx.device);
        let allocation = self.plan.allocation.unwrap_or_default();
        magnitude_masks(cx.dense, &mut masks, budget, allocation)?;
        let model = masks.apply(cx.dense.clone(), None)?;
        Ok(MethodOutcome {
            model,
            measured_ms: None,
            allocation: match budget {
                WeightBudget::NM { .. } => budget.pattern().to_string(),
                WeightBudget::Sparsity(_) => allocation.to_string(),
            },
            history: None,
            cost: None,
            collapse: None,
        })
    }
}
