//! One module per scenario; each returns an [`crate::run::Outcome`].
pub mod c2c;
pub mod group;
pub mod idle;
pub mod offline;
pub mod storm;
