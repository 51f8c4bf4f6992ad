//! Container networking. [`dataplane`] is the only code that touches aya.
pub mod dataplane;
