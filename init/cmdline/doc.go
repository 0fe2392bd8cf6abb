// Package cmdline parses the guest kernel command line (/proc/cmdline) into
// the agent's Config.
//
// The agent.* names and meanings follow the Kata Containers agent
// (src/agent/src/config.rs) so that an unmodified Kata runtime can drive
// Keel; Keel adds a few names of its own (agent.modules, agent.rootfs,
// agent.cgroup, agent.hostname, agent.entropy) and understands the plain
// kernel names root=, rootfstype=, rootflags=, ro/rw and
// systemd.unified_cgroup_hierarchy=.
//
// Parsing never fails: unknown agent.* keys and malformed values are
// returned as Warnings (the default is kept) so that a typo on the command
// line is logged instead of leaving the VM without an agent.
//
// The table of parameters (Params) is the single source for both the parser
// and the documentation (Table, README.md); a test keeps README.md in sync.
package cmdline
