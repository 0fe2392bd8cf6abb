// Package version holds the agent's version strings.
package version

// Version is the agent's version, set at link time by the Makefile
// (-X github.com/keelvm/keel/agent/version.Version=...).
var Version = "0.0.0-dev"

// APIVersion is the agent API version reported by Health.Version. Keel speaks
// the Kata Containers 3.x agent API, which reports "0.0.1".
const APIVersion = "0.0.1"
