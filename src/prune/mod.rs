//! Pruning: the [`session`] that runs a prune's phases from a [`PrunePlan`], the [`methods`]
//! that plug into it, and the machinery they share: channel groups, the channel-mask hook,
//! surgery (physical removal), resource and latency models, importance criteria, budget
//! allocation and the [`knapsack`] solver, meeting a latency budget by measurement, and
//! reports.
//!
//! Pruning a trained run from Rust:
//!
//! ```no_run
//! use lopper::prune::{PrunePlan, PruneSession, methods::{MethodPlan, one_shot::OneShotPlan}};
//! let mut plan = PrunePlan::new("runs/lenet5", MethodPlan::L1(OneShotPlan::default()), "macs=0.5");
//! plan.finetune_epochs = Some(1);
//! let report = PruneSession::new(plan, "runs/lenet5-l1")?.run(&mut lopper::train::Silent)?;
//! println!("{}", report.markdown());
//! # Ok::<(), lopper::LopperError>(())
//! ```

pub mod admm;
pub mod allocation;
pub mod dsa;
pub mod groups;
pub mod importance;
pub mod knapsack;
pub mod latency;
pub mod mask;
pub mod measured;
pub mod methods;
pub mod pdp;
pub mod report;
pub mod resource;
pub mod session;
pub mod surgery;
pub mod weights;

pub use allocation::{Allocation, Budget, CostModel, Metric, allocate, harden};
pub use groups::{ChannelGroup, Member, Role, channel_groups, collapsed_streams};
pub use importance::{Criterion, Importance, channel_scores};
pub use latency::{LatencyModel, LatencyProfile};
pub use mask::{ChannelMasks, Selection};
pub use methods::iterative;
pub use methods::{MethodPlan, PruneMethod};
pub use resource::{Resource, ResourceModel, keep_ratios};
pub use session::{PrunePlan, PruneSession};
pub use surgery::prune_model;
