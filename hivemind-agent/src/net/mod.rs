//! Container networking. [`dataplane`] is the only code that touches aya; [`link`] plumbs
//! interfaces, addresses and routes over rtnetlink; [`netns`] runs work inside a namespace.
pub mod dataplane;
pub mod link;
pub mod netns;
