//! End-to-end tests of the `img` command: one binary, a module per area. Real processes, real
//! files and block devices, real multicast in private network namespaces (see imgcast-testlab).

mod boot;
mod cli;
mod realdisk;
mod session;
mod slow;
mod tui;
