//! Structured pruning machinery shared by every method: channel groups, the channel-mask
//! hook, surgery (physical removal), resource and latency models, importance criteria,
//! budget allocation, meeting a latency budget by measurement, and reports.

pub mod admm;
pub mod allocation;
pub mod dsa;
pub mod groups;
pub mod importance;
pub mod iterative;
pub mod latency;
pub mod mask;
pub mod measured;
pub mod report;
pub mod resource;
pub mod surgery;

pub use allocation::{Allocation, Budget, CostModel, Metric, allocate, harden};
pub use groups::{ChannelGroup, Member, Role, channel_groups, collapsed_streams};
pub use importance::{Criterion, channel_scores};
pub use latency::{LatencyModel, LatencyProfile};
pub use mask::{ChannelMasks, Selection};
pub use resource::{Resource, ResourceModel, keep_ratios};
pub use surgery::prune_model;
