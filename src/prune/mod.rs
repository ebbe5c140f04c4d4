//! Structured pruning machinery shared by every method: channel groups, the channel-mask
//! hook, and surgery (physical removal).

pub mod groups;
pub mod mask;
pub mod surgery;

pub use groups::{ChannelGroup, Member, Role, channel_groups};
pub use mask::{ChannelMasks, Selection};
pub use surgery::prune_model;
