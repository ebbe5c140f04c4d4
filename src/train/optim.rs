//! Building Burn's optimisers from a run configuration.

use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, ModuleOptimizer, SgdConfig};

use super::config::{OptimizerKind, TrainConfig};

/// SGD (PyTorch semantics: no dampening, coupled L2 weight decay) or AdamW (decoupled decay).
pub fn build_optimizer(cfg: &TrainConfig) -> ModuleOptimizer {
    match cfg.optimizer {
        OptimizerKind::Sgd => {
            let momentum = (cfg.momentum > 0.0).then_some(MomentumConfig {
                momentum: cfg.momentum,
                dampening: 0.0,
                nesterov: cfg.nesterov,
            });
            let decay = (cfg.weight_decay > 0.0).then_some(WeightDecayConfig {
                penalty: cfg.weight_decay as f32,
            });
            SgdConfig::new()
                .with_momentum(momentum)
                .with_weight_decay(decay)
                .init()
        }
        OptimizerKind::Adamw => AdamWConfig::new()
            .with_weight_decay(cfg.weight_decay as f32)
            .with_epsilon(1e-8)
            .init(),
    }
}
