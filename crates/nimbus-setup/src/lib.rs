//! Turning a bare machine into a runner host.
//!
//! [`exec::Exec`] is how setup reaches a machine: [`local::LocalExec`] runs commands as child
//! processes in the machine's process group on this host. Setup code is written against the
//! trait only, so the same steps run on a local machine and on one reached over SSH.
//!
//! This crate must not touch the store or decide lifecycle: it runs what it is told on the
//! machine it is given and reports what happened.

pub mod events;
pub mod exec;
pub mod installers;
pub mod local;
pub mod pipeline;
pub mod ssh;
pub mod state;
