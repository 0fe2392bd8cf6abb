#!/bin/sh
# Regenerates the Go code for protocol/proto/*.proto (run by `make proto`).
# protoc comes from Debian's protobuf-compiler; both plugins are pinned as
# tools in go.mod, so the output only changes when the .proto files or the
# pinned versions do (CI regenerates and checks `git diff --exit-code`).
set -eu
cd "$(dirname "$0")/.."
bin="$PWD/build/bin"
mkdir -p "$bin"
go build -o "$bin/" google.golang.org/protobuf/cmd/protoc-gen-go github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc
rm -f protocol/grpc/*.pb.go protocol/types/*.pb.go
PATH="$bin:$PATH" protoc \
	-I protocol/proto -I /usr/include \
	--go_out=. --go_opt=module=github.com/keelvm/keel \
	--go-ttrpc_out=. --go-ttrpc_opt=module=github.com/keelvm/keel \
	protocol/proto/agent.proto protocol/proto/oci.proto protocol/proto/health.proto protocol/proto/types.proto
# A container init (keel-agent re-executed by libcontainer) never uses the
# protocol: its descriptors are not registered there (see
# protocol/internal/containerinit). The sed below needs GNU sed (\n in the
# replacement, 0,/re/ addresses, -i without a suffix): Debian's, as in CI.
# Every protoc-gen-go file must have the init this rewrites; one that does
# not (a new protoc-gen-go layout) fails here rather than being left
# registering its descriptors in container inits. The ttrpc files have no
# init.
for f in protocol/grpc/*.pb.go protocol/types/*.pb.go; do
	case "$f" in *_ttrpc.pb.go) continue ;; esac
	if ! grep -q '^func init() { file_.*_proto_init() }$' "$f"; then
		echo "generate.sh: $f: no 'func init() { file_..._proto_init() }' to guard with containerinit.Running" >&2
		exit 1
	fi
	sed -i \
		-e 's|^func init() { \(file_.*_proto_init\)() }$|func init() {\n\tif containerinit.Running() {\n\t\treturn\n\t}\n\t\1()\n}|' \
		-e '0,/^import (/s|^import (|import (\n\tcontainerinit "github.com/keelvm/keel/protocol/internal/containerinit"|' \
		"$f"
	gofmt -w "$f"
done
gofmt -l protocol/grpc protocol/types
