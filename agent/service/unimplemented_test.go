package service

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keelvm/keel/agent/containers"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// Every RPC of the fallback answers Unimplemented and names itself.
func TestUnimplementedCoversEveryRPC(t *testing.T) {
	api := reflect.TypeOf((*pb.AgentServiceService)(nil)).Elem()
	u := reflect.ValueOf(Unimplemented{})
	for i := 0; i < api.NumMethod(); i++ {
		m := api.Method(i)
		req := reflect.New(m.Type.In(1).Elem())
		out := u.MethodByName(m.Name).Call([]reflect.Value{reflect.ValueOf(context.Background()), req})
		err, _ := out[1].Interface().(error)
		if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), m.Name) {
			t.Errorf("%s: %v, want Unimplemented naming the RPC", m.Name, err)
		}
	}
}

// Service routes the RPCs Implemented() lists to real handlers and every
// other RPC to the fallback.
func TestServiceRouting(t *testing.T) {
	impl := map[string]bool{}
	for _, n := range Implemented() {
		impl[n] = true
	}
	if !impl["GetGuestDetails"] || !impl["GetMetrics"] {
		t.Fatalf("Implemented() = %v, want at least GetGuestDetails and GetMetrics", Implemented())
	}
	s := reflect.ValueOf(New(Handlers{Containers: containers.New(containers.Options{})}))
	api := reflect.TypeOf((*pb.AgentServiceService)(nil)).Elem()
	for i := 0; i < api.NumMethod(); i++ {
		m := api.Method(i)
		if impl[m.Name] {
			continue
		}
		req := reflect.New(m.Type.In(1).Elem())
		out := s.MethodByName(m.Name).Call([]reflect.Value{reflect.ValueOf(context.Background()), req})
		if err, _ := out[1].Interface().(error); status.Code(err) != codes.Unimplemented {
			t.Errorf("%s is not in Implemented() but answered %v", m.Name, err)
		}
	}
}

func TestGuestDetailsFromSysfs(t *testing.T) {
	root := t.TempDir()
	mustWrite(t, root+"/devices/system/memory/block_size_bytes", "8000000\n")
	g := &Guest{SysfsRoot: root, StorageHandlers: []string{"local"}, IsInit: func() bool { return true }}
	resp, err := g.GetGuestDetails(context.Background(), &pb.GuestDetailsRequest{MemBlockSize: true, MemHotplugProbe: true})
	if err != nil {
		t.Fatal(err)
	}
	if resp.MemBlockSizeBytes != 0x8000000 || resp.SupportMemHotplugProbe {
		t.Errorf("got %v, want 128 MiB blocks and no probe", resp)
	}
	if !resp.AgentDetails.InitDaemon || len(resp.AgentDetails.StorageHandlers) != 1 {
		t.Errorf("agent details %v", resp.AgentDetails)
	}
	mustWrite(t, root+"/devices/system/memory/probe", "")
	resp, _ = g.GetGuestDetails(context.Background(), &pb.GuestDetailsRequest{MemHotplugProbe: true})
	if !resp.SupportMemHotplugProbe || resp.MemBlockSizeBytes != 0 {
		t.Errorf("probe present, block size not asked: %v", resp)
	}
	mustWrite(t, root+"/devices/system/memory/block_size_bytes", "zz\n")
	if _, err := g.GetGuestDetails(context.Background(), &pb.GuestDetailsRequest{MemBlockSize: true}); status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "mem_block_size") {
		t.Errorf("garbage block size: %v", err)
	}
}

// New puts every handler it is given into Service, none replaced by a
// default (a merge once dropped one, and its RPC answered from the
// zero-value handler).
func TestNewKeepsEveryHandler(t *testing.T) {
	var h Handlers
	hv := reflect.ValueOf(&h).Elem()
	for i := 0; i < hv.NumField(); i++ {
		if f := hv.Field(i); f.Kind() == reflect.Pointer && f.IsNil() {
			f.Set(reflect.New(f.Type().Elem()))
		}
	}
	s := reflect.ValueOf(New(h)).Elem()
	for i := 0; i < hv.NumField(); i++ {
		given := hv.Field(i)
		found := false
		for j := 0; j < s.NumField(); j++ {
			if s.Field(j).Type() == given.Type() && s.Field(j).Pointer() == given.Pointer() {
				found = true
			}
		}
		if !found {
			t.Errorf("Handlers.%s is not in the Service New built", hv.Type().Field(i).Name)
		}
	}
}

// GetGuestDetails waits for its extra features only as long as its
// context: a report not ready by the caller's deadline fails the RPC with
// DeadlineExceeded, naming why, rather than holding it.
func TestGuestDetailsExtraFeaturesBounded(t *testing.T) {
	stuck := make(chan struct{})
	defer close(stuck)
	g := &Guest{SysfsRoot: t.TempDir(), ExtraFeatures: func(ctx context.Context) ([]string, error) {
		select {
		case <-stuck:
			return nil, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("unable to wait for the report: %w", ctx.Err())
		}
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := g.GetGuestDetails(ctx, &pb.GuestDetailsRequest{})
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "report") {
		t.Errorf("GetGuestDetails with a report not ready = %v, want DeadlineExceeded naming it", err)
	}
	g.ExtraFeatures = func(context.Context) ([]string, error) { return []string{"keel.kernel.config=unavailable"}, nil }
	resp, err := g.GetGuestDetails(context.Background(), &pb.GuestDetailsRequest{})
	if err != nil || !reflect.DeepEqual(resp.AgentDetails.ExtraFeatures, []string{"keel.kernel.config=unavailable"}) {
		t.Errorf("GetGuestDetails = %v, %v", resp, err)
	}
}
