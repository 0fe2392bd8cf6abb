//go:build keelimports

package main

// With keelimports (BenchmarkP6BootSplit's third arm) the trivial init
// links every package keel-agent's main imports, so it runs their package
// initialisation and carries a binary of about keel-agent's size, but
// still does nothing but listen. Keep the list in step with
// cmd/keel-agent's imports (TestTrivialInitImportsKeel checks it).
import (
	_ "github.com/keelvm/keel/agent/bootgate"
	_ "github.com/keelvm/keel/agent/container"
	_ "github.com/keelvm/keel/agent/containers"
	_ "github.com/keelvm/keel/agent/devices"
	_ "github.com/keelvm/keel/agent/gcpolicy"
	_ "github.com/keelvm/keel/agent/hotplug"
	_ "github.com/keelvm/keel/agent/kernelcheck"
	_ "github.com/keelvm/keel/agent/metrics"
	_ "github.com/keelvm/keel/agent/network"
	_ "github.com/keelvm/keel/agent/networks"
	_ "github.com/keelvm/keel/agent/oom"
	_ "github.com/keelvm/keel/agent/passfd"
	_ "github.com/keelvm/keel/agent/server"
	_ "github.com/keelvm/keel/agent/service"
	_ "github.com/keelvm/keel/agent/storage"
	_ "github.com/keelvm/keel/agent/swap"
	_ "github.com/keelvm/keel/agent/uevent"
	_ "github.com/keelvm/keel/agent/version"
	_ "github.com/keelvm/keel/agent/volume"
	_ "github.com/keelvm/keel/init/boot"
	_ "github.com/keelvm/keel/init/cmdline"
	_ "github.com/keelvm/keel/init/reaper"
	_ "github.com/keelvm/keel/init/shutdown"
	_ "github.com/keelvm/keel/init/timeline"
	_ "github.com/keelvm/keel/kernel-config/required"
	_ "github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
)
