// Code generated from pb.AgentServiceService by reflection; DO NOT EDIT.
// unimplemented_test.go checks that it covers every RPC of the service.

package service

import (
	"context"

	"google.golang.org/protobuf/types/known/emptypb"

	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/types"
)

func (Unimplemented) AddARPNeighbors(context.Context, *pb.AddARPNeighborsRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("AddARPNeighbors")
}

func (Unimplemented) AddSwap(context.Context, *pb.AddSwapRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("AddSwap")
}

func (Unimplemented) AddSwapPath(context.Context, *pb.AddSwapPathRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("AddSwapPath")
}

func (Unimplemented) CloseStdin(context.Context, *pb.CloseStdinRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("CloseStdin")
}

func (Unimplemented) CopyFile(context.Context, *pb.CopyFileRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("CopyFile")
}

func (Unimplemented) CreateContainer(context.Context, *pb.CreateContainerRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("CreateContainer")
}

func (Unimplemented) CreateSandbox(context.Context, *pb.CreateSandboxRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("CreateSandbox")
}

func (Unimplemented) DestroySandbox(context.Context, *pb.DestroySandboxRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("DestroySandbox")
}

func (Unimplemented) ExecProcess(context.Context, *pb.ExecProcessRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("ExecProcess")
}

func (Unimplemented) GetDiagnosticData(context.Context, *pb.GetDiagnosticDataRequest) (*pb.GetDiagnosticDataResponse, error) {
	return nil, unimplemented("GetDiagnosticData")
}

func (Unimplemented) GetGuestDetails(context.Context, *pb.GuestDetailsRequest) (*pb.GuestDetailsResponse, error) {
	return nil, unimplemented("GetGuestDetails")
}

func (Unimplemented) GetIPTables(context.Context, *pb.GetIPTablesRequest) (*pb.GetIPTablesResponse, error) {
	return nil, unimplemented("GetIPTables")
}

func (Unimplemented) GetMetrics(context.Context, *pb.GetMetricsRequest) (*pb.Metrics, error) {
	return nil, unimplemented("GetMetrics")
}

func (Unimplemented) GetOOMEvent(context.Context, *pb.GetOOMEventRequest) (*pb.OOMEvent, error) {
	return nil, unimplemented("GetOOMEvent")
}

func (Unimplemented) GetVolumeStats(context.Context, *pb.VolumeStatsRequest) (*pb.VolumeStatsResponse, error) {
	return nil, unimplemented("GetVolumeStats")
}

func (Unimplemented) ListInterfaces(context.Context, *pb.ListInterfacesRequest) (*pb.Interfaces, error) {
	return nil, unimplemented("ListInterfaces")
}

func (Unimplemented) ListRoutes(context.Context, *pb.ListRoutesRequest) (*pb.Routes, error) {
	return nil, unimplemented("ListRoutes")
}

func (Unimplemented) MemAgentCompactSet(context.Context, *pb.MemAgentCompactConfig) (*emptypb.Empty, error) {
	return nil, unimplemented("MemAgentCompactSet")
}

func (Unimplemented) MemAgentMemcgSet(context.Context, *pb.MemAgentMemcgConfig) (*emptypb.Empty, error) {
	return nil, unimplemented("MemAgentMemcgSet")
}

func (Unimplemented) MemHotplugByProbe(context.Context, *pb.MemHotplugByProbeRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("MemHotplugByProbe")
}

func (Unimplemented) OnlineCPUMem(context.Context, *pb.OnlineCPUMemRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("OnlineCPUMem")
}

func (Unimplemented) PauseContainer(context.Context, *pb.PauseContainerRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("PauseContainer")
}

func (Unimplemented) ReadStderr(context.Context, *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error) {
	return nil, unimplemented("ReadStderr")
}

func (Unimplemented) ReadStdout(context.Context, *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error) {
	return nil, unimplemented("ReadStdout")
}

func (Unimplemented) RemoveContainer(context.Context, *pb.RemoveContainerRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("RemoveContainer")
}

func (Unimplemented) RemoveStaleVirtiofsShareMounts(context.Context, *pb.RemoveStaleVirtiofsShareMountsRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("RemoveStaleVirtiofsShareMounts")
}

func (Unimplemented) ReseedRandomDev(context.Context, *pb.ReseedRandomDevRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("ReseedRandomDev")
}

func (Unimplemented) ResizeVolume(context.Context, *pb.ResizeVolumeRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("ResizeVolume")
}

func (Unimplemented) ResumeContainer(context.Context, *pb.ResumeContainerRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("ResumeContainer")
}

func (Unimplemented) SetGuestDateTime(context.Context, *pb.SetGuestDateTimeRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("SetGuestDateTime")
}

func (Unimplemented) SetIPTables(context.Context, *pb.SetIPTablesRequest) (*pb.SetIPTablesResponse, error) {
	return nil, unimplemented("SetIPTables")
}

func (Unimplemented) SetPolicy(context.Context, *pb.SetPolicyRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("SetPolicy")
}

func (Unimplemented) SignalProcess(context.Context, *pb.SignalProcessRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("SignalProcess")
}

func (Unimplemented) StartContainer(context.Context, *pb.StartContainerRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("StartContainer")
}

func (Unimplemented) StatsContainer(context.Context, *pb.StatsContainerRequest) (*pb.StatsContainerResponse, error) {
	return nil, unimplemented("StatsContainer")
}

func (Unimplemented) TtyWinResize(context.Context, *pb.TtyWinResizeRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("TtyWinResize")
}

func (Unimplemented) UpdateContainer(context.Context, *pb.UpdateContainerRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("UpdateContainer")
}

func (Unimplemented) UpdateEphemeralMounts(context.Context, *pb.UpdateEphemeralMountsRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("UpdateEphemeralMounts")
}

func (Unimplemented) UpdateInterface(context.Context, *pb.UpdateInterfaceRequest) (*types.Interface, error) {
	return nil, unimplemented("UpdateInterface")
}

func (Unimplemented) UpdateRoutes(context.Context, *pb.UpdateRoutesRequest) (*pb.Routes, error) {
	return nil, unimplemented("UpdateRoutes")
}

func (Unimplemented) WaitProcess(context.Context, *pb.WaitProcessRequest) (*pb.WaitProcessResponse, error) {
	return nil, unimplemented("WaitProcess")
}

func (Unimplemented) WriteStdin(context.Context, *pb.WriteStreamRequest) (*pb.WriteStreamResponse, error) {
	return nil, unimplemented("WriteStdin")
}
