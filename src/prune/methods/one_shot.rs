//! One-shot pruning: score every channel once by a criterion (L1, L2, BatchNorm |γ|, Taylor,
//! random), share the budget out between groups (uniform or global), cut.

use serde::{Deserialize, Serialize};

use super::{Flow, MethodContext, MethodOutcome, PruneMethod, build_for_budget};
use crate::error::{LopperError, Result};
use crate::prune::allocation::{Allocation, Amount, Budget, allocate};
use crate::prune::importance::{Criterion, channel_scores};
use crate::prune::measured::Surgery;

/// Settings of the one-shot methods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OneShotPlan {
    /// How channels are shared out between groups.
    #[serde(default = "uniform")]
    pub allocation: Allocation,
    /// Batches of training data the Taylor criterion's gradients come from.
    #[serde(default = "taylor_batches")]
    pub taylor_batches: usize,
}

fn uniform() -> Allocation {
    Allocation::Uniform
}

pub(crate) fn taylor_batches() -> usize {
    16
}

impl Default for OneShotPlan {
    fn default() -> Self {
        OneShotPlan {
            allocation: uniform(),
            taylor_batches: taylor_batches(),
        }
    }
}

impl OneShotPlan {
    pub(crate) fn check(&self, flow: &Flow) -> Result<()> {
        if flow.from_scratch {
            return Err(LopperError::Config(
                "pruning from scratch works with the dsa, gmp, pdp, rigl and iee methods only"
                    .into(),
            ));
        }
        Ok(())
    }
}

pub struct OneShot {
    pub criterion: Criterion,
    pub plan: OneShotPlan,
}

impl PruneMethod for OneShot {
    fn prune(&mut self, cx: &mut MethodContext) -> Result<MethodOutcome> {
        let cb = cx.channel_budget()?;
        let scores = channel_scores(
            self.criterion,
            cx.dense,
            cx.groups,
            Some((&cx.data.train, self.plan.taylor_batches)),
            cx.device,
            cx.cfg.seed,
        )?;
        let surgery = Surgery {
            source: cx.dense,
            groups: cx.groups,
            scores: &scores,
            cost: cb.cost,
            unit: cx.round_to.max(1),
            device: cx.device,
        };
        let (resource, groups, cost, round_to) =
            (cb.budget.resource, cx.groups, cb.cost, cx.round_to);
        let allocation = self.plan.allocation;
        let (model, measured_ms) = build_for_budget(cx, &surgery, |lim| {
            let budget = Budget {
                resource,
                amount: Amount::Absolute(lim),
            };
            allocate(groups, &scores, &budget, cost, allocation, round_to)
        })?;
        Ok(MethodOutcome {
            model,
            measured_ms,
            allocation: format!("{allocation:?}").to_lowercase(),
            history: None,
            cost: None,
            collapse: None,
        })
    }
}
