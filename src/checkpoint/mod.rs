//! Adapters, checkpoints and training runs: find the newest valid checkpoint and read it.

pub mod adapter;
pub mod adapter_config;
pub mod detect;
pub mod trainer_state;

pub use adapter::Adapter;
pub use adapter_config::{AdapterConfig, TargetModules};
pub use detect::{Detection, detect};
pub use trainer_state::TrainerState;
