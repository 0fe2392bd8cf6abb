//go:build cgoruntime || keelimports

package main

// With cgoruntime (BenchmarkP6BootSplit's second arm) the trivial init is
// linked like keel-agent: the cgo runtime, static glibc, threads made by
// pthread_create.
import _ "runtime/cgo"
