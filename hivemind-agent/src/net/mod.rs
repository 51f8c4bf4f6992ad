//! Container networking. [`dataplane`] is the only code that touches aya; [`link`] plumbs
//! interfaces, addresses and routes over rtnetlink; [`netns`] runs work inside a namespace;
//! [`ipam`] hands out subnets and addresses; [`network`] ties them together for the rest of
//! the agent.
pub mod dataplane;
pub mod ipam;
pub mod link;
pub mod netns;
pub mod network;
