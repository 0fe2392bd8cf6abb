//go:build seccomp

package service

// builtWithSeccomp: libcontainer was linked with libseccomp (build tag
// "seccomp"), so OCI seccomp profiles can be applied.
const builtWithSeccomp = true
