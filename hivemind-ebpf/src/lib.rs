// Exists so the agent can name this crate as a build-dependency: cargo then rebuilds the
// agent's embedded object whenever this crate changes.
#![no_std]
