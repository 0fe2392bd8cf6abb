//go:build !seccomp

package service

// builtWithSeccomp: without the "seccomp" build tag libcontainer cannot
// apply seccomp profiles, so the agent must not claim support.
const builtWithSeccomp = false
