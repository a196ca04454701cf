#include "backend/cuda/replay_graphs.h"

#include "backend/cuda/cuda_common.cuh"

namespace batchmax::cuda {

ReplayGraphs::~ReplayGraphs() {
  cudaDeviceSynchronize();
  for (auto& [k, e] : entries_)
    if (e.exec) cudaGraphExecDestroy(e.exec);
}

void ReplayGraphs::eager(const std::function<void()>& ops) {
  ++counts_.eager;
  ops();
}

void ReplayGraphs::run(const ReplayKey& key, uintptr_t tag, const std::function<void()>& ops,
                       cudaStream_t s) {
  if (!enabled_) return eager(ops);
  Entry& e = entries_[key];
  e.last_use = ++clock_;
  if (e.exec && e.tag == tag) {
    BMX_CUDA(cudaGraphLaunch(e.exec, s));
    ++counts_.replayed;
    return;
  }
  if (e.exec) {  // made under another tag: its addresses are stale
    BMX_CUDA(cudaStreamSynchronize(s));
    cudaGraphExecDestroy(e.exec);
    e.exec = nullptr;
    --n_graphs_;
  }
  if (e.refused || !e.seen) {
    e.seen = true;
    return eager(ops);
  }
  // Capture: the ops are recorded, not run. Anything an op cannot do while captured
  // (read host data, synchronise, allocate) fails the capture; the run then goes op by
  // op, which raises a real error again if there is one.
  cudaGraph_t graph = nullptr;
  BMX_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
  bool refused = false;
  try {
    ops();
  } catch (const std::exception&) {
    refused = true;
  }
  capturing_ = false;
  cudaError_t err = cudaStreamEndCapture(s, &graph);
  cudaGraphExec_t exec = nullptr;
  if (!refused && err == cudaSuccess && graph) err = cudaGraphInstantiate(&exec, graph, 0);
  if (graph) cudaGraphDestroy(graph);
  if (refused || err != cudaSuccess || !exec) {
    cudaGetLastError();  // a failed capture leaves its error behind
    e.refused = true;
    return eager(ops);
  }
  make_room();  // only entries holding a graph go, so not e
  e.exec = exec;
  e.tag = tag;
  ++n_graphs_;
  ++counts_.recorded;
  BMX_CUDA(cudaGraphLaunch(exec, s));
}

void ReplayGraphs::make_room() {
  if (n_graphs_ < max_graphs_) return;
  auto oldest = entries_.end();
  for (auto it = entries_.begin(); it != entries_.end(); ++it)
    if (it->second.exec && (oldest == entries_.end() || it->second.last_use < oldest->second.last_use))
      oldest = it;
  if (oldest == entries_.end()) return;
  BMX_CUDA(cudaDeviceSynchronize());  // a launch of it may still be queued
  cudaGraphExecDestroy(oldest->second.exec);
  oldest->second.exec = nullptr;
  --n_graphs_;
}

void ReplayGraphs::drop(const void* owner) {
  bool synced = false;
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->first.owner != owner) {
      ++it;
      continue;
    }
    if (it->second.exec) {
      if (!synced) BMX_CUDA(cudaDeviceSynchronize());
      synced = true;
      cudaGraphExecDestroy(it->second.exec);
      --n_graphs_;
    }
    it = entries_.erase(it);
  }
}

}  // namespace batchmax::cuda
