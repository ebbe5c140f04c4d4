//! Structured pruning machinery shared by every method: channel groups, the channel-mask
//! hook, and surgery (physical removal).

pub mod allocation;
pub mod groups;
pub mod importance;
pub mod mask;
pub mod report;
pub mod resource;
pub mod surgery;

pub use allocation::{Allocation, Budget, allocate};
pub use groups::{ChannelGroup, Member, Role, channel_groups};
pub use importance::{Criterion, channel_scores};
pub use mask::{ChannelMasks, Selection};
pub use resource::{Resource, ResourceModel, keep_ratios};
pub use surgery::prune_model;
