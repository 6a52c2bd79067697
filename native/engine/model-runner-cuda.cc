// model-runner-cuda.cc: CudaModelRunner (see model-runner-cuda.h).
//
// One step, all on one stream:
//   host: validate the batch, pack its arrays into pinned memory  -> one H2D copy
//   device: embedding, then per layer
//     xb = rmsnorm(x += delta)            (the residual add of the previous block, fused)
//     q, k, v = xb @ wq/wk/wv^T (+ bias); rope(q, k) and cache_write(k, v) in one kernel
//     att = paged_attention(q, pool);  delta = att @ wo^T (+ bias)
//     xb = rmsnorm(x += delta)
//     gate, up = xb @ w_gate/w_up^T (+ bias); gate = silu(gate) * up;  delta = gate @ w_down^T
//   xb = rmsnorm(x += delta) with the final norm; the logits rows are gathered (the embedding
//   kernel over xb), logits = x_out @ lm_head^T in fp32
// Matmuls: cuBLAS. A one-token step (decode of a batch of one, the latency case) runs q, k and v
// as one GEMM and gate and up as another, over weights that lie back to back on the device (the
// upload keeps each layer's tensors in order; a bias breaks the fusion); with one row, the
// fused output's parts are contiguous [1, heads, head_dim] vectors the other kernels take as
// they are. A hand-written GEMV (one warp per weight row) was measured and lost to cuBLAS on
// every Llama-3.1-8B projection (0.70-0.78 of the bandwidth against 0.87-0.92), so it is gone.
//   -> D2H of the fp32 logits, or of the argmax ids (forward_greedy).
// Tensor parallelism (model-runner-cuda.h): o and down write fp32 partial sums. Ranks on GPUs of
// their own add them on the devices (one-shot over CUDA IPC for small sums, NCCL for large, as
// setup_all_reduce chose) into delta, rounded once; ranks that share a GPU stage them through
// pinned host memory for the group's all-reduce, synchronising the stream twice a layer. Either
// way a rank's steps run eagerly (no graphs), and its logits are its vocabulary rows, gathered on
// rank 0 on the host.
// Activations are in the model's dtype (bf16 for a bf16 model) with fp32 arithmetic inside each
// kernel, as Hugging Face computes a bf16 model; the CPU runner keeps fp32 activations, so the
// two agree to bf16 rounding, and exactly in structure (test-cuda-forward.cc).
//
// CUDA graphs: a decode step (every sequence one new token, every one sampled) is padded to the
// next graph size G and replays the graph captured for G. Its inputs live in a buffer of fixed
// address per G; padding rows get token 0, position 0, slot -1 (nothing written), one key and
// the first block; their outputs are ignored. Attention in a graph is planned for the longest
// context a table can hold, so one capture serves every context length (blocks past a
// sequence's end return at once).
#include "model-runner-cuda.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "../kernels/cpu/thread-pool.h"
#include "../kernels/dtype.h"
#include "../kernels/cuda/all-reduce.h"
#include "../kernels/cuda/argmax.h"
#include "../kernels/cuda/cache-write.h"
#include "../kernels/cuda/device-memory.h"
#include "../kernels/cuda/embedding.h"
#include "../kernels/cuda/gemm.h"
#include "../kernels/cuda/ipc-handle.h"
#include "../kernels/cuda/op-trace.h"
#include "../kernels/cuda/paged-attention.h"
#include "../kernels/cuda/rmsnorm.h"
#include "../kernels/cuda/silu-mul.h"

namespace llm {

namespace {

using cuda::DeviceMemory;
using cuda::PinnedMemory;
using cuda::cuda_error;

Status invalid(const std::string& message) { return Status(StatusCode::invalid_argument, message); }

size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// Calls f(tensor) for every weight view of the model, in a fixed order.
template <typename W, typename F>
void for_each_tensor(W& w, F&& f) {
  f(w.embed);
  for (auto& l : w.layers) {
    for (auto* t : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.bq, &l.bk, &l.bv, &l.wo, &l.bo, &l.q_norm, &l.k_norm, &l.mlp_norm, &l.w_gate,
                    &l.w_up, &l.w_down, &l.b_gate, &l.b_up, &l.b_down})
      f(*t);
  }
  f(w.final_norm);
  f(w.lm_head);
}

// Where a step's arrays sit in the packed staging buffer (bytes from its start).
struct BatchLayout {
  size_t token_ids, positions, slot_mapping, query_start_loc, seq_lens, block_tables, logits_indices, bytes;

  static BatchLayout of(int64_t T, int64_t S, int64_t L, int64_t max_blocks) {
    BatchLayout o{};
    size_t at = 0;
    auto take = [&](size_t bytes) {
      const size_t here = at;
      at = align_up(at + bytes, 16);
      return here;
    };
    o.slot_mapping = take(static_cast<size_t>(T) * 8);
    o.token_ids = take(static_cast<size_t>(T) * 4);
    o.positions = take(static_cast<size_t>(T) * 4);
    o.query_start_loc = take(static_cast<size_t>(S + 1) * 4);
    o.seq_lens = take(static_cast<size_t>(S) * 4);
    o.block_tables = take(static_cast<size_t>(S * max_blocks) * 4);
    o.logits_indices = take(static_cast<size_t>(L) * 4);
    o.bytes = at;
    return o;
  }
};

// The device-side batch one run of the layers reads.
struct DeviceBatch {
  const int32_t* token_ids;
  const int32_t* positions;
  const int64_t* slot_mapping;
  const int32_t* logits_indices;
  int64_t num_tokens, num_logits;
  cuda::AttentionBatch attn;  // device pointers + host sizes
};

constexpr int64_t kGraphSizes[] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512};

class CudaModelRunnerImpl final : public CudaModelRunner {
 public:
  CudaModelRunnerImpl(const Model& model, const CudaRunnerOptions& opts) : model_(model), opts_(opts) {}

  ~CudaModelRunnerImpl() override {
    drop_graphs();
    gemm_.reset();
    if (stream_) cudaStreamDestroy(stream_);
  }

  Status init();
  const char* backend_name() const override { return "cuda"; }
  int64_t vocab_size() const override { return model_.config.vocab_size; }
  Status forward(const ForwardBatch& batch, float* logits) override;
  Status forward_greedy(const ForwardBatch& batch, int32_t* token_ids) override;
  // With tensor parallelism rank 0 has the whole logits only on the host.
  bool greedy_on_device() const override { return !tp(); }
  // The sampler's rows (anything but plain greedy) on host threads beside the GPU: up to
  // kHostSamplingThreads of the CPUs this process may run on, unpinned, started at the first
  // step that samples (a tensor-parallel rank other than 0 never does); they sleep between steps.
  int host_threads() const override {
    return std::max(1, std::min<int>(kHostSamplingThreads, static_cast<int>(cpu::allowed_cpus().size())));
  }
  void parallel_rows(int64_t n, const std::function<void(int, int64_t, int64_t)>& fn) override {
    if (!host_pool_) host_pool_ = std::make_unique<cpu::ThreadPool>(host_threads(), std::vector<int>{}, false);
    host_pool_->parallel_for_indexed(n, fn);
  }

  size_t free_device_bytes() const override {
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) return 0;
    const size_t reserve = activation_bytes(std::max<int64_t>(opts_.max_num_tokens, 1), 256) + (size_t{1} << 30);
    return free > reserve ? free - reserve : 0;
  }
  Status set_kv_cache(const KVCacheView& pool) override;
  KVCacheView kv_cache() const override { return kv_view_; }
  std::string describe() const override {
    std::string s = device_.describe() + ", cuBLAS " + gemm_->library() + (graphs_enabled_ ? ", decode graphs on" : ", graphs off");
    if (tp())
      s += ", tensor-parallel rank " + std::to_string(model_.shard.rank) + " of " + std::to_string(model_.shard.size) +
           " on device " + std::to_string(device_.device) + " (all-reduce: " + all_reduce_description_ + ")";
    return s;
  }

 private:
  struct Graph {
    cudaGraphExec_t exec = nullptr;
    int64_t max_blocks = 0;
    cuda::DeviceMemory inputs;  // BatchLayout::of(G, G, G, max_blocks)
  };

  bool tp() const { return model_.shard.size > 1; }
  size_t activation_bytes(int64_t tokens, int64_t logits_rows) const;
  // Destroys every captured graph: called when a buffer a graph points at moves.
  void drop_graphs() {
    for (auto& [size, graph] : graphs_) cudaGraphExecDestroy(graph.exec);
    graphs_.clear();
  }
  Status reserve_activations(int64_t tokens, int64_t logits_rows);
  Status reserve_workspace(const cuda::AttentionBatch& attn);
  // Packs the batch into pinned staging at `layout`, padded to S = T = L = pad_to when pad_to > 0.
  void pack(const ForwardBatch& b, const BatchLayout& layout, int64_t pad_to);
  DeviceBatch device_batch(const ForwardBatch& b, const BatchLayout& layout, const void* base, int64_t pad_to) const;
  // Enqueues the layers and the fp32 logits of the batch's logits rows into logits_.
  Status run_layers(const DeviceBatch& d);
  // delta = x @ w^T (+ bias), [T, hidden]; with tensor parallelism summed over the ranks.
  Status project_out(const void* x, int64_t T, const Tensor& w, const Tensor& bias);
  // Tensor parallelism: how the ranks add their parts (KVSERVE_TP_ALL_REDUCE, where they are).
  Status setup_all_reduce();
  // The device method for a sum of `bytes`, or null: through the host.
  cuda::DeviceAllReduce* device_all_reduce(size_t bytes) const {
    if (small_sums_ && bytes <= small_sum_max_bytes_) return small_sums_.get();
    return large_sums_.get();
  }
  // cudaStreamSynchronize, or the device all-reduce's wait, which gives up on a rank that is gone.
  Status wait_for_step();
  // Runs the batch (a graph when it can) up to logits_ on the device.
  Status enqueue(const ForwardBatch& b);
  Status enqueue_graph(const ForwardBatch& b, int64_t graph_size);
  Status capture(int64_t graph_size, int64_t max_blocks, Graph* g);
  int64_t graph_size_for(const ForwardBatch& b) const;

  Status gemm(const void* x, int64_t M, const Tensor& w, const Tensor& bias, void* y, DType out_dtype) {
    cuda::GemmArgs a;
    a.x = x;
    a.w = w.data;
    a.bias = bias.present() ? bias.data : nullptr;
    a.y = y;
    a.M = M;
    a.N = w.rows;
    a.K = w.cols;
    a.in_dtype = w.dtype;
    a.out_dtype = out_dtype;
    return gemm_->run(a, stream_);
  }

  const Model& model_;
  CudaRunnerOptions opts_;
  static constexpr int kHostSamplingThreads = 8;
  std::unique_ptr<cpu::ThreadPool> host_pool_;  // parallel_rows
  cuda::DeviceInfo device_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::CublasGemm> gemm_;
  DeviceMemory cublas_workspace_;
  DeviceMemory weight_memory_;
  ModelWeights weights_;  // views of weight_memory_
  DeviceMemory inv_freq_;
  KVCacheView kv_view_;
  int64_t num_heads_ = 0, num_kv_heads_ = 0, intermediate_ = 0;
  DType dtype_ = DType::bf16;

  // Activations, [capacity_tokens rows] unless noted.
  int64_t capacity_tokens_ = 0, capacity_logits_ = 0;
  DeviceMemory x_, xb_, delta_, q_, k_, v_, att_, gate_, up_;
  DeviceMemory qkv_;     // [q_dim + 2 * kv_dim]: a one-token step's fused q, k, v
  DeviceMemory gate_up_; // [2 * intermediate]: a one-token step's fused gate, up
  DeviceMemory x_out_;   // [capacity_logits, hidden]
  DeviceMemory logits_;  // [capacity_logits, vocab] fp32
  DeviceMemory tokens_;  // [capacity_logits] int32
  DeviceMemory partial_;     // tensor parallelism: [capacity_tokens, hidden] fp32, a rank's o or down product
  PinnedMemory host_sum_;    // tensor parallelism: that product on the host, summed over the ranks in place
  PinnedMemory host_delta_;  // tensor parallelism: the sum rounded to the model's dtype, for the device
  std::vector<float> gathered_;  // tensor parallelism, rank 0: every rank's logits rows
  // Tensor parallelism, ranks on GPUs of their own: the device sums up to small_sum_max_bytes_
  // (one-shot), and above it (NCCL); a size neither takes goes through the host.
  std::unique_ptr<cuda::DeviceAllReduce> small_sums_, large_sums_;
  size_t small_sum_max_bytes_ = 0;
  std::string all_reduce_description_ = "through host shared memory";
  DeviceMemory workspace_;
  DeviceMemory batch_;   // eager steps' packed arrays
  PinnedMemory staging_;
  PinnedMemory host_out_;

  bool graphs_enabled_ = true;
  std::map<int64_t, Graph> graphs_;
  cuda::OpTrace* trace_ = nullptr;  // set for a traced eager step

  void mark(const char* op) {
    if (trace_) trace_->mark(op, stream_);
  }
  void end_trace() {
    if (trace_) trace_->end_step();
    trace_ = nullptr;
  }
};

Status CudaModelRunnerImpl::init() {
  LLM_RETURN_IF_ERROR(cuda::probe_device(&device_, opts_.device));  // current from here on
  if (tp() && !opts_.tp.bound())
    return invalid("a tensor-parallel rank's CUDA runner needs CudaRunnerOptions::tp (its sums are partial)");
  LLM_CUDA_RETURN_IF_ERROR("cudaStreamCreate", cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  LLM_RETURN_IF_ERROR(cuda::CublasGemm::create(&gemm_));
  // A workspace of our own: cuBLAS then allocates nothing while a graph is captured.
  LLM_RETURN_IF_ERROR(cublas_workspace_.reserve(size_t{32} << 20, "cuBLAS workspace"));
  LLM_RETURN_IF_ERROR(gemm_->set_workspace(cublas_workspace_.get(), cublas_workspace_.bytes()));
  const char* env = std::getenv("KVSERVE_CUDA_GRAPHS");
  graphs_enabled_ = opts_.cuda_graphs && !(env && std::strcmp(env, "0") == 0) && !tp();
  if (tp()) LLM_RETURN_IF_ERROR(setup_all_reduce());

  const ModelConfig& c = model_.config;
  if (model_.weights.layers.empty() || c.head_dim <= 0) return invalid("the model has no layers");
  const LayerWeights& l0 = model_.weights.layers[0];
  num_heads_ = l0.wq.rows / c.head_dim;
  num_kv_heads_ = l0.wk.rows / c.head_dim;
  intermediate_ = l0.w_gate.rows;
  dtype_ = model_.weights.embed.dtype;

  // Weights: one allocation, each distinct host tensor copied once (a tied lm_head is the
  // embedding's copy), laid out in for_each_tensor's order (run_layers fuses neighbours).
  weights_ = model_.weights;
  std::vector<Tensor*> tensors;
  for_each_tensor(weights_, [&](Tensor& t) { tensors.push_back(&t); });
  LLM_RETURN_IF_ERROR(cuda::upload_tensors(tensors, &weight_memory_));

  const std::vector<float> inv_freq = rope_inv_freq(c);
  LLM_RETURN_IF_ERROR(inv_freq_.reserve(inv_freq.size() * sizeof(float), "rope frequencies"));
  LLM_CUDA_RETURN_IF_ERROR("copying rope frequencies", cudaMemcpy(inv_freq_.get(), inv_freq.data(),
                                                                  inv_freq.size() * sizeof(float), cudaMemcpyHostToDevice));
  return reserve_activations(std::max<int64_t>(opts_.max_num_tokens, 1), 64);
}

Status CudaModelRunnerImpl::set_kv_cache(const KVCacheView& pool) {
  if (pool.num_blocks <= 0 || !pool.data) return invalid("the KV cache needs at least one block");
  kv_view_ = pool;
  drop_graphs();
  return Status::Ok();
}

size_t CudaModelRunnerImpl::activation_bytes(int64_t tokens, int64_t logits_rows) const {
  const ModelConfig& c = model_.config;
  const size_t e = static_cast<size_t>(dtype_size(dtype_));
  const size_t q_dim = static_cast<size_t>(num_heads_ * c.head_dim), kv_dim = static_cast<size_t>(num_kv_heads_ * c.head_dim);
  const size_t per_token = (3 * static_cast<size_t>(c.hidden_size) + 2 * q_dim + 2 * kv_dim + 2 * static_cast<size_t>(intermediate_)) * e;
  return static_cast<size_t>(tokens) * per_token +
         static_cast<size_t>(logits_rows) * (static_cast<size_t>(c.hidden_size) * e + static_cast<size_t>(c.vocab_size) * 4 + 4);
}

Status CudaModelRunnerImpl::reserve_activations(int64_t tokens, int64_t logits_rows) {
  if (tokens <= capacity_tokens_ && logits_rows <= capacity_logits_) return Status::Ok();
  drop_graphs();  // they point at the old buffers (captured again when next needed)
  const ModelConfig& c = model_.config;
  const size_t e = static_cast<size_t>(dtype_size(dtype_));
  const int64_t T = std::max(tokens, capacity_tokens_), L = std::max(logits_rows, capacity_logits_);
  const size_t n = static_cast<size_t>(T);
  LLM_RETURN_IF_ERROR(x_.reserve(n * c.hidden_size * e, "activations"));
  LLM_RETURN_IF_ERROR(xb_.reserve(n * c.hidden_size * e, "activations"));
  LLM_RETURN_IF_ERROR(delta_.reserve(n * c.hidden_size * e, "activations"));
  LLM_RETURN_IF_ERROR(q_.reserve(n * num_heads_ * c.head_dim * e, "activations"));
  LLM_RETURN_IF_ERROR(att_.reserve(n * num_heads_ * c.head_dim * e, "activations"));
  LLM_RETURN_IF_ERROR(k_.reserve(n * num_kv_heads_ * c.head_dim * e, "activations"));
  LLM_RETURN_IF_ERROR(v_.reserve(n * num_kv_heads_ * c.head_dim * e, "activations"));
  LLM_RETURN_IF_ERROR(gate_.reserve(n * intermediate_ * e, "activations"));
  LLM_RETURN_IF_ERROR(up_.reserve(n * intermediate_ * e, "activations"));
  LLM_RETURN_IF_ERROR(qkv_.reserve((num_heads_ + 2 * num_kv_heads_) * c.head_dim * e, "activations"));
  LLM_RETURN_IF_ERROR(gate_up_.reserve(2 * intermediate_ * e, "activations"));
  LLM_RETURN_IF_ERROR(x_out_.reserve(static_cast<size_t>(L) * c.hidden_size * e, "activations"));
  LLM_RETURN_IF_ERROR(logits_.reserve(static_cast<size_t>(L) * c.vocab_size * 4, "logits"));
  LLM_RETURN_IF_ERROR(tokens_.reserve(static_cast<size_t>(L) * 4, "sampled ids"));
  if (tp()) LLM_RETURN_IF_ERROR(partial_.reserve(n * c.hidden_size * 4, "partial sums"));
  capacity_tokens_ = T;
  capacity_logits_ = L;
  return Status::Ok();
}

Status CudaModelRunnerImpl::reserve_workspace(const cuda::AttentionBatch& attn) {
  const size_t need = cuda::paged_attention_workspace_bytes(attn, kv_view_);
  if (need <= workspace_.bytes()) return Status::Ok();
  drop_graphs();  // they point at the old one
  return workspace_.reserve(need, "attention workspace");
}

void CudaModelRunnerImpl::pack(const ForwardBatch& b, const BatchLayout& o, int64_t pad_to) {
  char* base = staging_.as<char>();
  const int64_t T = pad_to > 0 ? pad_to : b.num_tokens, S = pad_to > 0 ? pad_to : b.num_seqs;
  const int64_t L = pad_to > 0 ? pad_to : b.num_logits, mb = b.max_blocks_per_seq;
  auto* ids = reinterpret_cast<int32_t*>(base + o.token_ids);
  auto* pos = reinterpret_cast<int32_t*>(base + o.positions);
  auto* slots = reinterpret_cast<int64_t*>(base + o.slot_mapping);
  auto* qsl = reinterpret_cast<int32_t*>(base + o.query_start_loc);
  auto* lens = reinterpret_cast<int32_t*>(base + o.seq_lens);
  auto* tables = reinterpret_cast<int32_t*>(base + o.block_tables);
  auto* rows = reinterpret_cast<int32_t*>(base + o.logits_indices);
  std::memcpy(ids, b.token_ids, b.num_tokens * 4);
  std::memcpy(pos, b.positions, b.num_tokens * 4);
  std::memcpy(slots, b.slot_mapping, b.num_tokens * 8);
  std::memcpy(qsl, b.query_start_loc, (b.num_seqs + 1) * 4);
  std::memcpy(lens, b.seq_lens, b.num_seqs * 4);
  std::memcpy(tables, b.block_tables, b.num_seqs * mb * 4);
  std::memcpy(rows, b.logits_indices, b.num_logits * 4);
  // Padding (graphs): one-token sequences at position 0 that write nothing and read block 0.
  for (int64_t t = b.num_tokens; t < T; ++t) {
    ids[t] = 0;
    pos[t] = 0;
    slots[t] = -1;
  }
  for (int64_t s = b.num_seqs; s < S; ++s) {
    qsl[s + 1] = qsl[s] + 1;
    lens[s] = 1;
    std::memset(tables + s * mb, 0, static_cast<size_t>(mb) * 4);
  }
  for (int64_t i = b.num_logits; i < L; ++i) rows[i] = static_cast<int32_t>(i);
}

DeviceBatch CudaModelRunnerImpl::device_batch(const ForwardBatch& b, const BatchLayout& o, const void* base_ptr,
                                              int64_t pad_to) const {
  const char* base = static_cast<const char*>(base_ptr);
  DeviceBatch d{};
  d.token_ids = reinterpret_cast<const int32_t*>(base + o.token_ids);
  d.positions = reinterpret_cast<const int32_t*>(base + o.positions);
  d.slot_mapping = reinterpret_cast<const int64_t*>(base + o.slot_mapping);
  d.logits_indices = reinterpret_cast<const int32_t*>(base + o.logits_indices);
  d.num_tokens = pad_to > 0 ? pad_to : b.num_tokens;
  d.num_logits = pad_to > 0 ? pad_to : b.num_logits;
  cuda::AttentionBatch& a = d.attn;
  a.num_seqs = pad_to > 0 ? pad_to : b.num_seqs;
  a.query_start_loc = reinterpret_cast<const int32_t*>(base + o.query_start_loc);
  a.seq_lens = reinterpret_cast<const int32_t*>(base + o.seq_lens);
  a.block_tables = reinterpret_cast<const int32_t*>(base + o.block_tables);
  a.max_blocks_per_seq = b.max_blocks_per_seq;
  a.num_heads = num_heads_;
  a.scale = 1.0f / std::sqrt(static_cast<float>(model_.config.head_dim));
  a.sliding_window = model_.config.sliding_window;
  a.num_tokens = d.num_tokens;
  if (pad_to > 0) {  // a graph: planned for the longest context a table holds
    a.max_query_len = 1;
    a.max_seq_len = b.max_blocks_per_seq * kv_view_.block_size;
  } else {
    for (int64_t s = 0; s < b.num_seqs; ++s) {
      a.max_query_len = std::max<int64_t>(a.max_query_len, b.query_start_loc[s + 1] - b.query_start_loc[s]);
      a.max_seq_len = std::max<int64_t>(a.max_seq_len, b.seq_lens[s]);
    }
  }
  return d;
}

// Tensors a and b lie back to back on the device with the same row length: as one matrix,
// [a.rows + b.rows, cols].
bool back_to_back(const Tensor& a, const Tensor& b) {
  return a.cols == b.cols && a.dtype == b.dtype &&
         static_cast<const char*>(a.data) + a.rows * a.cols * dtype_size(a.dtype) == b.data;
}

Status CudaModelRunnerImpl::run_layers(const DeviceBatch& d) {
  const ModelConfig& c = model_.config;
  const ModelWeights& w = weights_;
  const int64_t T = d.num_tokens, D = c.hidden_size, F = intermediate_;
  const int64_t q_dim = num_heads_ * c.head_dim, kv_dim = num_kv_heads_ * c.head_dim;
  const size_t e = static_cast<size_t>(dtype_size(dtype_));
  const float eps = static_cast<float>(c.rms_norm_eps);
  const Tensor none{};
  LLM_RETURN_IF_ERROR(cuda::embedding(w.embed, d.token_ids, T, x_.get(), stream_));
  mark("embedding");
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    // xb = rmsnorm(x += delta): delta is the previous layer's MLP output (none before layer 0)
    LLM_RETURN_IF_ERROR(cuda::rmsnorm_residual(x_.get(), l == 0 ? nullptr : delta_.get(), lw.attn_norm.data, eps, T, D,
                                               xb_.get(), dtype_, stream_));
    mark("rmsnorm");
    // q, k, v = xb @ wq/wk/wv^T (+ bias): one GEMM for a one-token step (see the top)
    void *q = q_.get(), *k = k_.get(), *v = v_.get();
    if (T == 1 && !lw.bq.present() && back_to_back(lw.wq, lw.wk) && back_to_back(lw.wk, lw.wv)) {
      const Tensor wqkv{lw.wq.data, lw.wq.dtype, lw.wq.rows + lw.wk.rows + lw.wv.rows, D};
      LLM_RETURN_IF_ERROR(gemm(xb_.get(), T, wqkv, none, qkv_.get(), dtype_));
      q = qkv_.get();
      k = qkv_.as<char>() + q_dim * e;
      v = qkv_.as<char>() + (q_dim + kv_dim) * e;
    } else {
      LLM_RETURN_IF_ERROR(gemm(xb_.get(), T, lw.wq, lw.bq, q, dtype_));
      LLM_RETURN_IF_ERROR(gemm(xb_.get(), T, lw.wk, lw.bk, k, dtype_));
      LLM_RETURN_IF_ERROR(gemm(xb_.get(), T, lw.wv, lw.bv, v, dtype_));
    }
    mark("gemm qkv");
    if (lw.q_norm.present()) {
      // q, k = rmsnorm(q) * q_norm, rmsnorm(k) * k_norm, each head a row   (Qwen3)
      LLM_RETURN_IF_ERROR(cuda::rmsnorm_residual(q, nullptr, lw.q_norm.data, eps, T * num_heads_, c.head_dim, q,
                                                 dtype_, stream_));
      LLM_RETURN_IF_ERROR(cuda::rmsnorm_residual(k, nullptr, lw.k_norm.data, eps, T * num_kv_heads_, c.head_dim, k,
                                                 dtype_, stream_));
      mark("q/k norm");
    }
    // rope(q, k) (cos and sin times yarn's attention factor), then k and v into the pool: one launch
    cuda::RopeArgs rope;
    rope.q = q;
    rope.positions = d.positions;
    rope.inv_freq = inv_freq_.as<float>();
    rope.scale = c.rope_scaling.attention_factor;
    rope.num_heads = num_heads_;
    LLM_RETURN_IF_ERROR(cuda::cache_write(k, v, d.slot_mapping, T, kv_view_, l, stream_, &rope));
    mark("rope, cache_write");
    LLM_RETURN_IF_ERROR(cuda::paged_attention(q, kv_view_, l, d.attn, att_.get(), workspace_.get(), workspace_.bytes(),
                                              stream_));
    mark("attention");
    // delta = att @ wo^T (+ bias)
    LLM_RETURN_IF_ERROR(project_out(att_.get(), T, lw.wo, lw.bo));
    mark("gemm o");
    LLM_RETURN_IF_ERROR(cuda::rmsnorm_residual(x_.get(), delta_.get(), lw.mlp_norm.data, eps, T, D, xb_.get(), dtype_,
                                               stream_));
    mark("rmsnorm");
    // gate = silu(xb @ w_gate^T) * (xb @ w_up^T) (+ biases): one GEMM for gate and up for a
    // one-token step; delta = gate @ w_down^T (+ bias)
    if (T == 1 && !lw.b_gate.present() && back_to_back(lw.w_gate, lw.w_up)) {
      const Tensor w_gate_up{lw.w_gate.data, lw.w_gate.dtype, 2 * F, D};
      LLM_RETURN_IF_ERROR(gemm(xb_.get(), T, w_gate_up, none, gate_up_.get(), dtype_));
      mark("gemm gate_up");
      LLM_RETURN_IF_ERROR(cuda::silu_mul(gate_up_.get(), gate_up_.as<char>() + F * e, gate_.get(), F, dtype_, stream_));
    } else {
      LLM_RETURN_IF_ERROR(gemm(xb_.get(), T, lw.w_gate, lw.b_gate, gate_.get(), dtype_));
      LLM_RETURN_IF_ERROR(gemm(xb_.get(), T, lw.w_up, lw.b_up, up_.get(), dtype_));
      mark("gemm gate_up");
      LLM_RETURN_IF_ERROR(cuda::silu_mul(gate_.get(), up_.get(), gate_.get(), T * F, dtype_, stream_));
    }
    mark("silu_mul");
    LLM_RETURN_IF_ERROR(project_out(gate_.get(), T, lw.w_down, lw.b_down));
    mark("gemm down");
  }
  // xb = final_norm(x += delta); x_out = xb[logits_indices]; logits = x_out @ lm_head^T (fp32)
  LLM_RETURN_IF_ERROR(cuda::rmsnorm_residual(x_.get(), delta_.get(), w.final_norm.data, eps, T, D, xb_.get(), dtype_,
                                             stream_));
  const TensorView rows{xb_.get(), dtype_, T, D};
  LLM_RETURN_IF_ERROR(cuda::embedding(rows, d.logits_indices, d.num_logits, x_out_.get(), stream_));
  mark("final norm, rows");
  LLM_RETURN_IF_ERROR(gemm(x_out_.get(), d.num_logits, w.lm_head, none, logits_.get(), DType::f32));
  mark("lm_head");
  return Status::Ok();
}

// With tensor parallelism each rank's product is a partial sum: it is taken in fp32, added over
// the ranks on the host (the group's all-reduce gives every rank the same bits), rounded once to
// the model's dtype, as a GEMM's output is at tp_size 1, and copied back. The host buffers are
// free again after the synchronisation: the previous call's copy back has finished by then.
Status CudaModelRunnerImpl::project_out(const void* x, int64_t T, const Tensor& w, const Tensor& bias) {
  if (!tp()) return gemm(x, T, w, bias, delta_.get(), dtype_);
  const int64_t n = T * model_.config.hidden_size;
  const size_t e = static_cast<size_t>(dtype_size(dtype_));
  LLM_RETURN_IF_ERROR(gemm(x, T, w, bias, partial_.get(), DType::f32));
  if (cuda::DeviceAllReduce* ar = device_all_reduce(static_cast<size_t>(n) * 4)) {
    LLM_RETURN_IF_ERROR(ar->run(partial_.as<float>(), n, delta_.get(), dtype_, stream_));
    mark("all-reduce");
    return Status::Ok();
  }
  LLM_RETURN_IF_ERROR(host_sum_.reserve(static_cast<size_t>(n) * 4, "all-reduce staging"));
  LLM_RETURN_IF_ERROR(host_delta_.reserve(static_cast<size_t>(n) * e, "all-reduce staging"));
  float* sum = host_sum_.as<float>();
  LLM_CUDA_RETURN_IF_ERROR("copying a partial sum to the host",
                           cudaMemcpyAsync(sum, partial_.get(), static_cast<size_t>(n) * 4, cudaMemcpyDeviceToHost, stream_));
  LLM_CUDA_RETURN_IF_ERROR("the forward pass", cudaStreamSynchronize(stream_));
  mark("partial sum to host");
  LLM_RETURN_IF_ERROR(opts_.tp.all_reduce(sum, n));
  void* out = host_delta_.as<void>();
  if (dtype_ == DType::f32) {
    std::memcpy(out, sum, static_cast<size_t>(n) * 4);
  } else {
    for (int64_t i = 0; i < n; ++i) store_f32(out, dtype_, i, sum[i]);
  }
  LLM_CUDA_RETURN_IF_ERROR("copying a sum to the device",
                           cudaMemcpyAsync(delta_.get(), out, static_cast<size_t>(n) * e, cudaMemcpyHostToDevice, stream_));
  mark("all-reduce");
  return Status::Ok();
}

// KVSERVE_TP_ALL_REDUCE: auto (the default), host, ipc or nccl. Every rank says what it can do
// (a GPU of its own; peer access to every other rank's GPU; NCCL) and all take what all can:
//   auto: sums up to kOneShotMaxBytes one-shot when every pair has peer access, larger ones with
//         NCCL when every rank loads it, the rest through the host (all of them when ranks
//         share a GPU);
//   host / ipc / nccl: every sum that way, or the start fails naming the rank that cannot.
// The one-shot bound follows vLLM's custom all-reduce (which moves bf16, half these bytes); it
// is not measured here.
Status CudaModelRunnerImpl::setup_all_reduce() {
  const char* env = std::getenv("KVSERVE_TP_ALL_REDUCE");
  const std::string mode = env && *env ? env : "auto";
  if (mode != "auto" && mode != "host" && mode != "ipc" && mode != "nccl")
    return invalid("KVSERVE_TP_ALL_REDUCE=" + mode + ": expected auto, host, ipc or nccl");
  const int rank = model_.shard.rank, world = model_.shard.size;
  if (mode == "host") return Status::Ok();
  if (!opts_.tp.all_gather) {
    if (mode == "auto") return Status::Ok();
    return invalid("KVSERVE_TP_ALL_REDUCE=" + mode + ": this runner's group cannot exchange handles");
  }
  // What this rank can do, as a note "own p2p nccl" of 0s and 1s, and why not.
  const bool own = cuda::device_count() >= world && world <= cuda::kMaxAllReduceRanks;
  bool p2p = own;
  for (int p = 0; p < world && p2p; ++p) p2p = cuda::peer_access(device_.device, cuda_rank_device(p));
  std::string nccl_why;
  const bool nccl = own && cuda::nccl_available(&nccl_why);
  const std::string mine = std::string(own ? "1" : "0") + (p2p ? "1" : "0") + (nccl ? "1" : "0");
  std::vector<std::string> notes;
  LLM_RETURN_IF_ERROR(opts_.tp.all_gather(mine, &notes));
  if (notes.size() != static_cast<size_t>(world))
    return Status(StatusCode::internal, "the all-reduce exchange returned " + std::to_string(notes.size()) + " notes");
  bool all_p2p = true, all_nccl = true;
  std::string lacking;  // the first rank that cannot do what was asked, and why
  for (int r = 0; r < world; ++r) {
    const std::string& n = notes[static_cast<size_t>(r)];
    if (n.size() != 3) return Status(StatusCode::internal, "tensor-parallel rank " + std::to_string(r) + " sent a malformed note");
    const bool r_own = n[0] == '1', r_p2p = n[1] == '1', r_nccl = n[2] == '1';
    all_p2p = all_p2p && r_p2p;
    all_nccl = all_nccl && r_nccl;
    if (!lacking.empty()) continue;
    if (!r_own && world > cuda::kMaxAllReduceRanks)
      lacking = "the device all-reduce takes at most " + std::to_string(cuda::kMaxAllReduceRanks) + " ranks";
    else if (!r_own)
      lacking = "rank " + std::to_string(r) + " shares its GPU (" + std::to_string(world) + " ranks, " +
                std::to_string(cuda::device_count()) + (cuda::device_count() == 1 ? " GPU)" : " GPUs)");
    else if (mode == "ipc" && !r_p2p)
      lacking = "rank " + std::to_string(r) + "'s GPU has no peer access to every other rank's";
    else if (mode == "nccl" && !r_nccl)
      lacking = "rank " + std::to_string(r) + " cannot load NCCL" + (r == rank && !nccl_why.empty() ? ": " + nccl_why : "");
  }
  if (mode != "auto" && !lacking.empty()) return Status(StatusCode::device_unavailable, "KVSERVE_TP_ALL_REDUCE=" + mode + ": " + lacking);
  const auto failed = [&](const Status& st) {
    return Status(st.code(), st.message() + " (KVSERVE_TP_ALL_REDUCE=host adds through host memory instead)");
  };
  std::vector<std::string> parts;
  if (all_p2p && mode != "nccl") {
    constexpr size_t kOneShotMaxBytes = size_t{2} << 20;
    const size_t bound = mode == "ipc" ? SIZE_MAX : world == 2 ? kOneShotMaxBytes : world <= 4 ? kOneShotMaxBytes / 2 : kOneShotMaxBytes / 4;
    Status st = cuda::make_ipc_all_reduce(rank, world, std::min(bound, kOneShotMaxBytes), opts_.tp.all_gather, &small_sums_);
    // Every rank learns whether all mapped their peers, so that none goes on to NCCL's start
    // (which waits for every rank) while another has failed.
    std::vector<std::string> outcomes;
    LLM_RETURN_IF_ERROR(opts_.tp.all_gather(st.ok() ? "" : st.message().substr(0, 200), &outcomes));
    for (size_t r = 0; r < outcomes.size() && st.ok(); ++r)
      if (!outcomes[r].empty()) st = Status(StatusCode::device_unavailable, "tensor-parallel rank " + std::to_string(r) + ": " + outcomes[r]);
    if (!st.ok()) return failed(st);
    small_sum_max_bytes_ = bound;
    parts.push_back(small_sums_->describe() + (mode == "ipc" ? "" : " up to " + std::to_string(bound >> 10) + " KiB"));
  }
  if (all_nccl && mode != "ipc") {
    if (Status st = cuda::make_nccl_all_reduce(rank, world, opts_.tp.all_gather, &large_sums_); !st.ok()) return failed(st);
    parts.push_back(large_sums_->describe() + (small_sums_ ? " above" : ""));
  } else if (small_sums_ && mode == "auto") {
    parts.push_back("through host shared memory above");
  }
  if (!parts.empty()) {
    all_reduce_description_.clear();
    for (const std::string& p : parts) all_reduce_description_ += (all_reduce_description_.empty() ? "" : ", ") + p;
  }
  return Status::Ok();
}

Status CudaModelRunnerImpl::wait_for_step() {
  if (!small_sums_ && !large_sums_) {
    LLM_CUDA_RETURN_IF_ERROR("the forward pass", cudaStreamSynchronize(stream_));
    return Status::Ok();
  }
  std::vector<cuda::DeviceAllReduce*> methods;
  if (small_sums_) methods.push_back(small_sums_.get());
  if (large_sums_) methods.push_back(large_sums_.get());
  return cuda::wait_for_stream(stream_, methods, opts_.tp.peers_alive);
}

int64_t CudaModelRunnerImpl::graph_size_for(const ForwardBatch& b) const {
  if (!graphs_enabled_ || b.num_tokens != b.num_seqs || b.num_logits != b.num_seqs || b.num_seqs == 0) return 0;
  for (int64_t i = 0; i < b.num_logits; ++i)
    if (b.logits_indices[i] != i) return 0;
  for (int64_t g : kGraphSizes)
    if (g >= b.num_seqs) return g <= opts_.max_graph_batch ? g : 0;
  return 0;
}

Status CudaModelRunnerImpl::capture(int64_t G, int64_t max_blocks, Graph* g) {
  // The inputs were packed and copied by the caller; one eager run first warms everything a
  // capture must not do (cuBLAS heuristics, kernel attributes), then the same calls are captured.
  ForwardBatch shape;
  shape.num_tokens = shape.num_seqs = shape.num_logits = G;
  shape.max_blocks_per_seq = max_blocks;
  const BatchLayout o = BatchLayout::of(G, G, G, max_blocks);
  const DeviceBatch d = device_batch(shape, o, g->inputs.get(), G);
  LLM_RETURN_IF_ERROR(run_layers(d));
  LLM_CUDA_RETURN_IF_ERROR("warming up a decode graph", cudaStreamSynchronize(stream_));
  cudaGraph_t graph = nullptr;
  LLM_CUDA_RETURN_IF_ERROR("cudaStreamBeginCapture", cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  const Status st = run_layers(d);
  const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
  LLM_RETURN_IF_ERROR(st);
  if (end != cudaSuccess) return cuda_error("cudaStreamEndCapture", end);
  const cudaError_t inst = cudaGraphInstantiate(&g->exec, graph, 0);
  cudaGraphDestroy(graph);
  if (inst != cudaSuccess) return cuda_error("cudaGraphInstantiate", inst);
  g->max_blocks = max_blocks;
  return Status::Ok();
}

Status CudaModelRunnerImpl::enqueue_graph(const ForwardBatch& b, int64_t G) {
  trace_ = nullptr;  // a capture must record no event
  // Everything the graph points at is reserved first (a reservation that grows drops graphs).
  LLM_RETURN_IF_ERROR(reserve_activations(G, G));
  const BatchLayout o = BatchLayout::of(G, G, G, b.max_blocks_per_seq);
  LLM_RETURN_IF_ERROR(staging_.reserve(o.bytes, "batch staging"));
  ForwardBatch shape;
  shape.max_blocks_per_seq = b.max_blocks_per_seq;
  LLM_RETURN_IF_ERROR(reserve_workspace(device_batch(shape, o, nullptr, G).attn));
  Graph& g = graphs_[G];
  if (g.exec && g.max_blocks != b.max_blocks_per_seq) {
    cudaGraphExecDestroy(g.exec);
    g.exec = nullptr;
  }
  LLM_RETURN_IF_ERROR(g.inputs.reserve(o.bytes, "graph inputs"));
  pack(b, o, G);
  LLM_CUDA_RETURN_IF_ERROR("copying the batch", cudaMemcpyAsync(g.inputs.get(), staging_.as<void>(), o.bytes,
                                                                 cudaMemcpyHostToDevice, stream_));
  if (!g.exec) {
    const Status st = capture(G, b.max_blocks_per_seq, &g);
    if (!st.ok()) {
      // Graphs are an optimisation: say why once and go on eagerly.
      std::fprintf(stderr, "kvserve: CUDA graph capture failed (%s: %s); decode steps run without graphs\n",
                   st.code_name(), st.message().c_str());
      graphs_enabled_ = false;
      cudaGetLastError();
      graphs_.erase(G);
      return enqueue(b);
    }
  }
  LLM_CUDA_RETURN_IF_ERROR("cudaGraphLaunch", cudaGraphLaunch(g.exec, stream_));
  return Status::Ok();
}

Status CudaModelRunnerImpl::enqueue(const ForwardBatch& b) {
  if (const int64_t G = graph_size_for(b); G > 0) return enqueue_graph(b, G);
  LLM_RETURN_IF_ERROR(reserve_activations(b.num_tokens, b.num_logits));
  const BatchLayout o = BatchLayout::of(b.num_tokens, b.num_seqs, b.num_logits, b.max_blocks_per_seq);
  LLM_RETURN_IF_ERROR(staging_.reserve(o.bytes, "batch staging"));
  LLM_RETURN_IF_ERROR(batch_.reserve(o.bytes, "batch"));
  // The previous step's copy out of staging has finished: forward() synchronised the stream.
  pack(b, o, 0);
  trace_ = cuda::OpTrace::instance().on ? &cuda::OpTrace::instance() : nullptr;
  mark("start");
  LLM_CUDA_RETURN_IF_ERROR("copying the batch",
                           cudaMemcpyAsync(batch_.get(), staging_.as<void>(), o.bytes, cudaMemcpyHostToDevice, stream_));
  mark("upload");
  const DeviceBatch d = device_batch(b, o, batch_.get(), 0);
  LLM_RETURN_IF_ERROR(reserve_workspace(d.attn));
  return run_layers(d);
}

Status CudaModelRunnerImpl::forward(const ForwardBatch& b, float* logits) {
  LLM_RETURN_IF_ERROR(validate_forward_batch(model_, num_heads_, num_kv_heads_, kv_view_, b));
  if (b.num_tokens == 0) return Status::Ok();
  // Tensor parallelism: only rank 0 returns logits.
  if (b.num_logits > 0 && !logits && model_.shard.rank == 0) return invalid("logits is required");
  LLM_CUDA_RETURN_IF_ERROR("cudaSetDevice", cudaSetDevice(device_.device));  // steps may come from another thread
  LLM_RETURN_IF_ERROR(enqueue(b));
  // logits_ holds this rank's vocabulary rows: all of them at tp_size 1.
  const size_t bytes = static_cast<size_t>(b.num_logits) * static_cast<size_t>(weights_.lm_head.rows) * 4;
  LLM_RETURN_IF_ERROR(host_out_.reserve(std::max<size_t>(bytes, 4), "logits staging"));
  LLM_CUDA_RETURN_IF_ERROR("copying the logits",
                           cudaMemcpyAsync(host_out_.as<void>(), logits_.get(), bytes, cudaMemcpyDeviceToHost, stream_));
  LLM_RETURN_IF_ERROR(wait_for_step());
  end_trace();
  if (tp())
    return gather_vocab_logits(model_.shard, model_.config.vocab_size, b.num_logits, host_out_.as<float>(), opts_.tp,
                               &gathered_, logits);
  std::memcpy(logits, host_out_.as<void>(), bytes);
  return Status::Ok();
}

Status CudaModelRunnerImpl::forward_greedy(const ForwardBatch& b, int32_t* token_ids) {
  if (tp()) return ModelRunner::forward_greedy(b, token_ids);  // the argmax of the gathered logits
  LLM_RETURN_IF_ERROR(validate_forward_batch(model_, num_heads_, num_kv_heads_, kv_view_, b));
  LLM_CUDA_RETURN_IF_ERROR("cudaSetDevice", cudaSetDevice(device_.device));
  if (b.num_tokens == 0) return Status::Ok();
  if (b.num_logits > 0 && !token_ids) return invalid("token_ids is required");
  LLM_RETURN_IF_ERROR(enqueue(b));
  LLM_RETURN_IF_ERROR(cuda::argmax(logits_.get(), b.num_logits, model_.config.vocab_size, DType::f32, tokens_.as<int32_t>(),
                                   stream_));
  mark("argmax");
  const size_t bytes = static_cast<size_t>(b.num_logits) * 4;
  LLM_RETURN_IF_ERROR(host_out_.reserve(std::max<size_t>(bytes, 4), "sampled ids staging"));
  LLM_CUDA_RETURN_IF_ERROR("copying the sampled ids",
                           cudaMemcpyAsync(host_out_.as<void>(), tokens_.get(), bytes, cudaMemcpyDeviceToHost, stream_));
  LLM_CUDA_RETURN_IF_ERROR("the forward pass", cudaStreamSynchronize(stream_));
  end_trace();
  std::memcpy(token_ids, host_out_.as<void>(), bytes);
  return Status::Ok();
}

}  // namespace

Status CudaModelRunner::create(const Model& model, const CudaRunnerOptions& opts, std::unique_ptr<CudaModelRunner>* out) {
  auto runner = std::make_unique<CudaModelRunnerImpl>(model, opts);
  LLM_RETURN_IF_ERROR(runner->init());
  *out = std::move(runner);
  return Status::Ok();
}

Status cuda_device_usable(std::string* description) {
  cuda::DeviceInfo info;
  LLM_RETURN_IF_ERROR(cuda::probe_device(&info));
  if (description) *description = info.describe();
  return Status::Ok();
}

bool cuda_backend_built() { return true; }

int cuda_rank_device(int rank) {
  const int count = cuda::device_count();
  return count > 0 ? rank % count : 0;
}

int cuda_ranks_per_device(int tp_size) {
  const int count = std::max(1, cuda::device_count());
  return (tp_size + count - 1) / count;
}

Status cuda_alloc_zeroed(size_t bytes, void** out) {
  *out = nullptr;
  int current = 0;
  if (cudaGetDevice(&current) != cudaSuccess) current = 0;  // the probe says why
  cuda::DeviceInfo device;
  LLM_RETURN_IF_ERROR(cuda::probe_device(&device, current));
  return cuda::alloc_zeroed(bytes, "the KV cache", out);
}

void cuda_free(void* p) {
  if (p) cudaFree(p);
}

Status cuda_export_ipc(const void* base, std::string* handle_hex, std::string* device_uuid) {
  return cuda::export_ipc_handle(base, handle_hex, device_uuid);
}

void cuda_op_trace_start() {
  cuda::OpTrace& t = cuda::OpTrace::instance();
  t.reset();
  t.on = true;
}

std::string cuda_op_trace_stop() {
  cuda::OpTrace& t = cuda::OpTrace::instance();
  t.on = false;
  return t.report();
}

}  // namespace llm
