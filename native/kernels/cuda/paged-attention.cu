// paged-attention.cu: paged_attention (see paged-attention.h).
//
// One kernel, attention_kernel<T, kHeadDim, kRows>: a block owns kRows "rows" of queries that
// share one sequence and one kv head, and walks that sequence's keys in tiles of kKeys:
//   row r = (token tok0 + r / heads_per_block, group member g0 + r % heads_per_block)
//   decode  (kRows = 8):  one token, up to 8 query heads of the group; the context may be split
//                         into partitions (blockIdx.x = split), combined by combine_kernel;
//   prefill (kRows = 32): 32 / heads_per_block tokens x the group's heads (blockIdx.x = tile).
// Grid: (query tiles x splits, num_kv_heads x head chunks, num_seqs); block: 128 threads.
// A block whose sequence is not of its launch's kind (one new token or more) returns at once.
//
// Per K/V tile, with the block's scores S [kKeys, kRows] in shared memory:
//   1. load K and V rows of the tile through the block table (16-byte loads) -> k_s, v_s;
//      pipelined (the default): cp.async into two stages, the next tile's copy in flight while
//      this one is computed; plain tiles (set_attention_variant): load, then compute
//   2. S[key][row] = q_row . k_key (q pre-scaled by scale * log2(e)); masked -> -inf
//      thread: one key, kScoreRows rows
//   3. online softmax per row (base 2): m_new = max(m, max S), P = 2^(S - m_new),
//      l = l * 2^(m - m_new) + sum P; kRowThreads threads per row
//   4. acc = acc * 2^(m - m_new) + P V; thread: one dim, kPvRows rows
// and at the end out = acc / l (or, split, the partial acc / l with its m and l).
// Decode has a second kernel, decode_kernel<T, kHeadDim, kGroup> (the default, "fast" variant,
// for groups of up to 8 query heads per kv head): no shared-memory staging, each sub-warp of
// head_dim / 8 lanes (16 bytes each) reads whole K and V rows straight into registers, four keys
// in flight, scores all of the group's heads against each key, and keeps its own online softmax;
// the block's sub-warps merge at the end (same partial format, same combine_kernel).
// Masking: key j is seen by a row at position q_pos iff first <= j <= q_pos (first = 0, or
// q_pos - window + 1 with a sliding window), and j lies in the block's partition.
// Inputs are trusted like the CPU kernel's: block tables cover every key below seq_lens.
#include <algorithm>
#include <climits>

#include "cuda-common.cuh"
#include "paged-attention.h"

namespace llm::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kDecodeRows = 8;
constexpr int kPrefillRows = 32;
constexpr int64_t kMinPartition = 64;  // the fewest keys a split-decode block is given (one tile)
constexpr int64_t kDecodeBlocksPerSm = 2;  // split decode until the grid has about this many blocks per SM (tiled)
AttentionVariant g_variant = AttentionVariant::fast;  // set_attention_variant
constexpr int kWarpDecodeWarps = 4;      // decode_kernel: warps per block
constexpr int kWarpDecodeUnroll = 4;     // decode_kernel: keys in flight per sub-warp
// 2, from bench-cuda-kernels' sweep on an H100 (Llama-3.1-8B, batch 32, context 4096: 0.78 of
// the bandwidth at 2 blocks per SM, 0.61 at 4, 0.69 at 8, 0.74 at 16; batch 1 the same at all).
int64_t g_warp_decode_blocks_per_sm = 2;  // set_decode_blocks_per_sm
constexpr float kLog2e = 1.4426950408889634f;

// Everything one launch needs (a kernel parameter, copied per launch).
struct LaunchArgs {
  const void* q;             // [T, num_heads, head_dim]
  void* out;                 // [T, num_heads, head_dim]
  const void* pool;          // [num_blocks][num_layers][2][block_size][num_kv_heads][head_dim]
  PoolStrides strides;
  int64_t num_kv_heads;
  int64_t layer;
  AttentionBatch batch;
  int64_t group;             // query heads per kv head
  int64_t heads_per_block;   // min(group, kRows)
  int64_t head_chunks;       // ceil(group / heads_per_block)
  int64_t min_q_len;         // the launch handles sequences with min_q_len <= new tokens <= max_q_len
  int64_t max_q_len;
  int64_t num_splits;        // > 1: blocks write partials, combine_kernel writes out
  int64_t partition;         // keys per split (>= max_seq_len when unsplit)
  float* part_out;           // [num_splits, T, num_heads, head_dim] acc / l of each split
  float* part_max;           // [num_splits, T, num_heads] m (log2 domain)
  float* part_sum;           // [num_splits, T, num_heads] l
};

template <typename T, int kHeadDim, int kRows, bool kPipelined>
struct Tile {
  static constexpr int kStages = kPipelined ? 2 : 1;
  static constexpr int kKeys = sizeof(T) == 4 ? 32 : 64;  // keys per tile: K + V tiles ~ 34 KiB
  static constexpr int kVec = 16 / sizeof(T);             // elements per 16-byte load
  static constexpr int kChunks = kHeadDim / kVec;         // 16-byte loads per K (or V) row
  static constexpr int kKvStride = kHeadDim + kVec;       // +16 bytes: 16-byte reads of 8 keys hit all banks
  static constexpr int kSStride = kRows + 4;              // S row of one key; float4-aligned
  static constexpr int kScoreRows = kRows * kKeys / kThreads;
  static constexpr int kRowThreads = kThreads / kRows;
  static constexpr int kPvRows = kRows * kHeadDim / kThreads;
  static constexpr size_t kFloats = kRows * kHeadDim + kKeys * kSStride + 3 * kRows;  // q_s, s_s, m/l/alpha
  static constexpr size_t kSmemBytes = (kFloats + 2 * kRows) * 4 + kStages * 2 * kKeys * kKvStride * sizeof(T);
  static_assert(kHeadDim % kVec == 0 && (kRows * kKeys) % kThreads == 0, "tile shapes");
  static_assert(kPvRows % 4 == 0, "P V reads rows as float4");
  static_assert(kRowThreads <= 32 && kKeys % kRowThreads == 0, "softmax rows within a warp");
  static_assert(((kFloats + 2 * kRows) * 4) % 16 == 0, "k_s must be 16-byte aligned");
};

// 16 bytes global -> shared without passing through registers (sm_80+); src_bytes 0 writes zeros.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending)); }

template <typename T, int kHeadDim, int kRows, bool kPipelined>
__global__ void __launch_bounds__(kThreads) attention_kernel(LaunchArgs a) {
  using G = Tile<T, kHeadDim, kRows, kPipelined>;
  extern __shared__ __align__(16) unsigned char smem[];
  float* q_s = reinterpret_cast<float*>(smem);   // [kRows][kHeadDim] q * scale * log2(e)
  float* s_s = q_s + kRows * kHeadDim;           // [kKeys][kSStride] scores, then probabilities
  float* m_s = s_s + G::kKeys * G::kSStride;     // [kRows] running max (log2 domain)
  float* l_s = m_s + kRows;                      // [kRows] running sum of probabilities
  float* alpha_s = l_s + kRows;                  // [kRows] this tile's rescale 2^(m_old - m_new)
  int* qpos_s = reinterpret_cast<int*>(alpha_s + kRows);  // [kRows] query position; -1 = unused row
  int* first_s = qpos_s + kRows;                 // [kRows] first key position the row sees
  T* kv_s = reinterpret_cast<T*>(first_s + kRows);  // [kStages][K, V][kKeys][kKvStride]

  const AttentionBatch& b = a.batch;
  const int64_t s = blockIdx.z;
  const int64_t q_begin = b.query_start_loc[s];
  const int64_t q_len = b.query_start_loc[s + 1] - q_begin;
  if (q_len < a.min_q_len || q_len > a.max_q_len) return;  // the other launch's sequence
  const int64_t seq_len = b.seq_lens[s];
  const int64_t split = blockIdx.x % a.num_splits;
  const int64_t tokens_per_tile = kRows / a.heads_per_block;
  const int64_t tok0 = (blockIdx.x / a.num_splits) * tokens_per_tile;
  const int64_t split_begin = split * a.partition;
  if (tok0 >= q_len || split_begin >= seq_len) return;  // past the sequence's tokens or keys
  const int64_t kvh = blockIdx.y / a.head_chunks;
  const int64_t g0 = (blockIdx.y % a.head_chunks) * a.heads_per_block;
  const int64_t H = b.num_heads;
  const int64_t window = b.sliding_window;
  const int tid = threadIdx.x;

  // Row r's token (within the sequence) and group member; used iff it exists.
  auto row_token = [&](int r) { return tok0 + r / a.heads_per_block; };
  auto row_member = [&](int r) { return g0 + r % a.heads_per_block; };
  auto row_used = [&](int r) {
    return r < tokens_per_tile * a.heads_per_block && row_token(r) < q_len && row_member(r) < a.group;
  };
  auto first_key = [&](int64_t q_pos) { return window > 0 ? max64(0, q_pos - window + 1) : int64_t{0}; };

  if (tid < kRows) {
    const int64_t q_pos = seq_len - q_len + row_token(tid);
    qpos_s[tid] = row_used(tid) ? static_cast<int>(q_pos) : -1;
    first_s[tid] = static_cast<int>(first_key(q_pos));
    m_s[tid] = -INFINITY;
    l_s[tid] = 0.0f;
  }
  const T* q = static_cast<const T*>(a.q);
  const float q_scale = b.scale * kLog2e;
  for (int i = tid; i < kRows * kHeadDim; i += kThreads) {
    const int r = i / kHeadDim, d = i % kHeadDim;
    const int64_t h = kvh * a.group + row_member(r);
    q_s[i] = row_used(r) ? to_float(q[((q_begin + row_token(r)) * H + h) * kHeadDim + d]) * q_scale : 0.0f;
  }
  __syncthreads();

  // Keys [kv_begin, kv_end): this split's part of what any row of the block sees.
  const int64_t last_tok = min64(tok0 + tokens_per_tile, q_len) - 1;
  const int64_t kv_begin = max64(split_begin, first_key(seq_len - q_len + tok0));
  const int64_t kv_end = min64(min64(split_begin + a.partition, seq_len), seq_len - q_len + last_tok + 1);
  const int32_t* block_table = b.block_tables + s * b.max_blocks_per_seq;  // [max_blocks_per_seq]
  const T* pool = static_cast<const T*>(a.pool);
  const int64_t bs = a.strides.block_size;

  const int sc_key = tid % G::kKeys, sc_row0 = (tid / G::kKeys) * G::kScoreRows;
  const int sm_row = tid / G::kRowThreads, sm_sub = tid % G::kRowThreads;
  const int pv_dim = tid % kHeadDim, pv_row0 = (tid / kHeadDim) * G::kPvRows;
  float acc[G::kPvRows] = {};

  // 1. K and V of keys [tile, tile + kKeys) -> stage `stage`; keys past kv_end are zeros.
  auto load_tile = [&](int64_t tile, int stage) {
    T* k_dst = kv_s + stage * 2 * G::kKeys * G::kKvStride;
    T* v_dst = k_dst + G::kKeys * G::kKvStride;
    for (int i = tid; i < G::kKeys * G::kChunks; i += kThreads) {
      const int key = i / G::kChunks, c = i % G::kChunks;
      const int64_t j = tile + key;
      const T* k_src = pool;  // any mapped address when there is no key (nothing is read)
      if (j < kv_end)
        k_src = pool + a.strides.offset(block_table[j / bs], a.layer, 0, j % bs) + kvh * kHeadDim + c * G::kVec;
      T* kd = k_dst + key * G::kKvStride + c * G::kVec;
      T* vd = v_dst + key * G::kKvStride + c * G::kVec;
      if constexpr (kPipelined) {
        const int n = j < kv_end ? 16 : 0;
        cp_async16(kd, k_src, n);
        cp_async16(vd, j < kv_end ? k_src + a.strides.kv : k_src, n);
      } else {
        uint4 k_raw = make_uint4(0, 0, 0, 0), v_raw = k_raw;
        if (j < kv_end) {
          k_raw = *reinterpret_cast<const uint4*>(k_src);
          v_raw = *reinterpret_cast<const uint4*>(k_src + a.strides.kv);
        }
        *reinterpret_cast<uint4*>(kd) = k_raw;
        *reinterpret_cast<uint4*>(vd) = v_raw;
      }
    }
    if constexpr (kPipelined) cp_async_commit();
  };

  if (kPipelined && kv_begin < kv_end) load_tile(kv_begin, 0);
  int stage = 0;
  for (int64_t tile = kv_begin; tile < kv_end; tile += G::kKeys, stage ^= kPipelined ? 1 : 0) {
    if constexpr (kPipelined) {
      // The next tile's copy goes out now (its stage was last read before the previous
      // iteration's closing barrier); then wait for this tile's.
      if (tile + G::kKeys < kv_end) {
        load_tile(tile + G::kKeys, stage ^ 1);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
    } else {
      load_tile(tile, 0);
    }
    __syncthreads();
    const T* k_s = kv_s + stage * 2 * G::kKeys * G::kKvStride;  // [kKeys][kKvStride]
    const T* v_s = k_s + G::kKeys * G::kKvStride;               // [kKeys][kKvStride]

    // 2. S[key][row] = q_row . k_key, or -inf where the row must not see the key.
    {
      float score[G::kScoreRows] = {};
      const T* k_row = k_s + sc_key * G::kKvStride;
      for (int d = 0; d < kHeadDim; d += G::kVec) {
        const uint4 raw = *reinterpret_cast<const uint4*>(k_row + d);
        const T* kv = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int e = 0; e < G::kVec; ++e) {
          const float kf = to_float(kv[e]);
#pragma unroll
          for (int r = 0; r < G::kScoreRows; ++r) score[r] += q_s[(sc_row0 + r) * kHeadDim + d + e] * kf;
        }
      }
      const int64_t j = tile + sc_key;
#pragma unroll
      for (int r = 0; r < G::kScoreRows; ++r) {
        const int row = sc_row0 + r;
        const bool seen = j < kv_end && j >= first_s[row] && j <= qpos_s[row];
        s_s[sc_key * G::kSStride + row] = seen ? score[r] : -INFINITY;
      }
    }
    __syncthreads();

    // 3. Online softmax of each row over this tile (base 2); S becomes P.
    {
      float tile_max = -INFINITY;
      for (int key = sm_sub; key < G::kKeys; key += G::kRowThreads)
        tile_max = fmaxf(tile_max, s_s[key * G::kSStride + sm_row]);
      for (int o = G::kRowThreads / 2; o > 0; o >>= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, o));
      const float m_old = m_s[sm_row];
      const float m_new = fmaxf(m_old, tile_max);
      float sum = 0.0f;
      for (int key = sm_sub; key < G::kKeys; key += G::kRowThreads) {
        float& x = s_s[key * G::kSStride + sm_row];
        x = m_new == -INFINITY ? 0.0f : exp2f(x - m_new);
        sum += x;
      }
      for (int o = G::kRowThreads / 2; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      if (sm_sub == 0) {
        const float alpha = m_new == -INFINITY ? 1.0f : exp2f(m_old - m_new);
        m_s[sm_row] = m_new;
        l_s[sm_row] = l_s[sm_row] * alpha + sum;
        alpha_s[sm_row] = alpha;
      }
    }
    __syncthreads();

    // 4. acc = acc * alpha + P V for this thread's dim and rows.
#pragma unroll
    for (int r = 0; r < G::kPvRows; ++r) acc[r] *= alpha_s[pv_row0 + r];
    for (int key = 0; key < G::kKeys; ++key) {
      const float v = to_float(v_s[key * G::kKvStride + pv_dim]);
      const float4* p = reinterpret_cast<const float4*>(s_s + key * G::kSStride + pv_row0);
#pragma unroll
      for (int r4 = 0; r4 < G::kPvRows / 4; ++r4) {
        const float4 p4 = p[r4];
        acc[4 * r4 + 0] += p4.x * v;
        acc[4 * r4 + 1] += p4.y * v;
        acc[4 * r4 + 2] += p4.z * v;
        acc[4 * r4 + 3] += p4.w * v;
      }
    }
    __syncthreads();
  }

  // out = acc / l, or this split's partial.
  const int64_t T_total = b.num_tokens;
#pragma unroll
  for (int r = 0; r < G::kPvRows; ++r) {
    const int row = pv_row0 + r;
    if (qpos_s[row] < 0) continue;
    const int64_t t = q_begin + row_token(row), h = kvh * a.group + row_member(row);
    const float l = l_s[row];
    if (a.num_splits == 1) {
      static_cast<T*>(a.out)[(t * H + h) * kHeadDim + pv_dim] = from_float<T>(acc[r] / l);
    } else {
      const int64_t idx = (split * T_total + t) * H + h;
      a.part_out[idx * kHeadDim + pv_dim] = l > 0.0f ? acc[r] / l : 0.0f;
      if (pv_dim == 0) {
        a.part_max[idx] = m_s[row];
        a.part_sum[idx] = l;
      }
    }
  }
}

// Decode without staging (see the top): grid (num_splits, num_kv_heads, num_seqs), block
// kWarpDecodeWarps warps. kGroup >= the group (query heads per kv head); arrays are sized by it.
template <typename T, int kHeadDim, int kGroup>
__global__ void __launch_bounds__(kWarpDecodeWarps * 32) decode_kernel(LaunchArgs a) {
  constexpr int kVec = 16 / sizeof(T);          // elements per 16-byte load
  constexpr int kLanes = kHeadDim / kVec;       // lanes reading one K (or V) row
  constexpr int kSubs = 32 / kLanes;            // sub-warps per warp: keys a warp reads at once
  constexpr int kSubTotal = kWarpDecodeWarps * kSubs;
  constexpr int kU = kWarpDecodeUnroll;
  static_assert(kLanes <= 32 && 32 % kLanes == 0, "a row within a warp");
  __shared__ float m_sh[kSubTotal][kGroup], l_sh[kSubTotal][kGroup];
  __shared__ float o_sh[kSubTotal][kGroup][kHeadDim];

  const AttentionBatch& b = a.batch;
  const int64_t s = blockIdx.z;
  const int64_t t = b.query_start_loc[s];
  if (b.query_start_loc[s + 1] - t != 1) return;  // not a decode sequence
  const int64_t seq_len = b.seq_lens[s];
  const int64_t split = blockIdx.x;
  const int64_t split_begin = split * a.partition;
  if (split_begin >= seq_len) return;
  const int64_t kvh = blockIdx.y;
  const int group = static_cast<int>(a.group);
  const int64_t H = b.num_heads;
  const int64_t q_pos = seq_len - 1;
  const int64_t first = b.sliding_window > 0 ? max64(0, q_pos - b.sliding_window + 1) : int64_t{0};
  const int64_t kv_begin = max64(split_begin, first);
  const int64_t kv_end = min64(split_begin + a.partition, seq_len);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int sub = warp * kSubs + lane / kLanes;  // this lane's sub-warp in the block
  const int d0 = (lane % kLanes) * kVec;          // its dims [d0, d0 + kVec)

  // q of the group's heads, this lane's dims, scaled into the log2 domain.
  float q[kGroup][kVec];
  const T* q_ptr = static_cast<const T*>(a.q) + (t * H + kvh * group) * kHeadDim + d0;
  const float q_scale = b.scale * kLog2e;
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    uint4 raw = make_uint4(0, 0, 0, 0);
    if (g < group) raw = *reinterpret_cast<const uint4*>(q_ptr + g * kHeadDim);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) q[g][i] = to_float(e[i]) * q_scale;
  }
  float m[kGroup], l[kGroup], acc[kGroup][kVec];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < kVec; ++i) acc[g][i] = 0.0f;
  }

  const int32_t* table = b.block_tables + s * b.max_blocks_per_seq;
  const T* pool = static_cast<const T*>(a.pool);
  const int64_t bs = a.strides.block_size;
  for (int64_t base = kv_begin; base < kv_end; base += kU * kSubTotal) {
    uint4 k_raw[kU], v_raw[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {  // all loads first: kU rows of K and of V in flight
      const int64_t j = base + u * kSubTotal + sub;
      k_raw[u] = v_raw[u] = make_uint4(0, 0, 0, 0);
      if (j < kv_end) {
        const int64_t off = a.strides.offset(table[j / bs], a.layer, 0, j % bs) + kvh * kHeadDim + d0;
        k_raw[u] = *reinterpret_cast<const uint4*>(pool + off);
        v_raw[u] = *reinterpret_cast<const uint4*>(pool + off + a.strides.kv);
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t j = base + u * kSubTotal + sub;
      const T* ke = reinterpret_cast<const T*>(&k_raw[u]);
      float score[kGroup];
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        float d = 0.0f;
#pragma unroll
        for (int i = 0; i < kVec; ++i) d = fmaf(q[g][i], to_float(ke[i]), d);
        score[g] = d;
      }
      // Sum over the sub-warp's lanes (every lane of the warp takes part, keys or not).
#pragma unroll
      for (int o = kLanes / 2; o > 0; o >>= 1)
#pragma unroll
        for (int g = 0; g < kGroup; ++g) score[g] += __shfl_xor_sync(0xffffffffu, score[g], o);
      if (j >= kv_end) continue;
      const T* ve = reinterpret_cast<const T*>(&v_raw[u]);
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        const float m_new = fmaxf(m[g], score[g]);
        const float alpha = exp2f(m[g] - m_new);  // 0 for the first key (m = -inf)
        const float p = exp2f(score[g] - m_new);
        l[g] = l[g] * alpha + p;
#pragma unroll
        for (int i = 0; i < kVec; ++i) acc[g][i] = fmaf(p, to_float(ve[i]), acc[g][i] * alpha);
        m[g] = m_new;
      }
    }
  }

  // Merge the sub-warps: out = sum_i 2^(m_i - M) acc_i / sum_i 2^(m_i - M) l_i.
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    if (lane % kLanes == 0) {
      m_sh[sub][g] = m[g];
      l_sh[sub][g] = l[g];
    }
#pragma unroll
    for (int i = 0; i < kVec; ++i) o_sh[sub][g][d0 + i] = acc[g][i];
  }
  __syncthreads();
  const int64_t T_total = b.num_tokens;
  for (int idx = threadIdx.x; idx < group * kHeadDim; idx += blockDim.x) {
    const int g = idx / kHeadDim, d = idx % kHeadDim;
    float M = -INFINITY;
    for (int i = 0; i < kSubTotal; ++i) M = fmaxf(M, m_sh[i][g]);
    float L = 0.0f, O = 0.0f;
    if (M != -INFINITY) {
      for (int i = 0; i < kSubTotal; ++i) {
        const float w = exp2f(m_sh[i][g] - M);  // 0 for a sub-warp that saw no key
        L += w * l_sh[i][g];
        O += w * o_sh[i][g][d];
      }
    }
    const int64_t h = kvh * group + g;
    if (a.num_splits == 1) {
      static_cast<T*>(a.out)[(t * H + h) * kHeadDim + d] = from_float<T>(L > 0.0f ? O / L : 0.0f);
    } else {
      const int64_t pidx = (split * T_total + t) * H + h;
      a.part_out[pidx * kHeadDim + d] = L > 0.0f ? O / L : 0.0f;
      if (d == 0) {
        a.part_max[pidx] = M;
        a.part_sum[pidx] = L;
      }
    }
  }
}

// out[t, h] = sum_p w_p o_p / sum_p w_p with w_p = l_p 2^(m_p - max_p m_p), over the splits
// that hold keys of the sequence. Grid: (num_seqs, num_heads); block: head_dim threads.
template <typename T, int kHeadDim>
__global__ void combine_kernel(LaunchArgs a) {
  const AttentionBatch& b = a.batch;
  const int64_t s = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
  const int64_t t = b.query_start_loc[s];
  if (b.query_start_loc[s + 1] - t != 1) return;  // not a decode sequence
  const int64_t splits = ceil_div(b.seq_lens[s], a.partition);
  const int64_t H = b.num_heads, T_total = b.num_tokens;
  float m_max = -INFINITY;
  for (int64_t p = 0; p < splits; ++p) m_max = fmaxf(m_max, a.part_max[(p * T_total + t) * H + h]);
  float num = 0.0f, den = 0.0f;
  for (int64_t p = 0; p < splits; ++p) {
    const int64_t idx = (p * T_total + t) * H + h;
    const float l = a.part_sum[idx];
    if (l == 0.0f) continue;  // a partition wholly outside the sliding window
    const float w = l * exp2f(a.part_max[idx] - m_max);
    num += w * a.part_out[idx * kHeadDim + d];
    den += w;
  }
  static_cast<T*>(a.out)[(t * H + h) * kHeadDim + d] = from_float<T>(num / den);
}

int sm_count() {
  static const int count = [] {
    int device = 0, n = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
    return n > 0 ? n : 1;
  }();
  return count;
}

// How the decode launch cuts the context: enough splits for about kDecodeBlocksPerSm blocks per SM, each of
// at least kMinPartition keys, partitions a multiple of the largest tile.
struct DecodePlan {
  int64_t num_splits;
  int64_t partition;
};

DecodePlan plan_decode(const AttentionBatch& b, const KVCacheView& cache) {
  const int64_t group = b.num_heads / cache.num_kv_heads;
  const int64_t blocks = b.num_seqs * cache.num_kv_heads * ceil_div(group, kDecodeRows);
  const int64_t max_seq_len = std::max<int64_t>(b.max_seq_len, 1);
  const int64_t most = std::max<int64_t>(1, ceil_div(max_seq_len, kMinPartition));
  const int64_t per_sm = g_variant == AttentionVariant::fast && group <= 8 ? g_warp_decode_blocks_per_sm : kDecodeBlocksPerSm;
  const int64_t want = std::clamp<int64_t>(ceil_div(per_sm * sm_count(), std::max<int64_t>(blocks, 1)), 1, most);
  if (want == 1) return {1, max_seq_len};
  const int64_t partition = ceil_div(ceil_div(max_seq_len, want), 64) * 64;
  const int64_t splits = ceil_div(max_seq_len, partition);
  return splits == 1 ? DecodePlan{1, max_seq_len} : DecodePlan{splits, partition};
}

template <typename T, int kHeadDim, int kRows, bool kPipelined>
Status launch_attention_as(const LaunchArgs& a, dim3 grid, cudaStream_t stream) {
  using G = Tile<T, kHeadDim, kRows, kPipelined>;
  // Once per process (one device per process): allow more than 48 KiB of shared memory.
  static const cudaError_t attr = cudaFuncSetAttribute(attention_kernel<T, kHeadDim, kRows, kPipelined>,
                                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                       static_cast<int>(G::kSmemBytes));
  if (attr != cudaSuccess) return Status(StatusCode::internal, std::string("paged_attention: ") + cudaGetErrorString(attr));
  attention_kernel<T, kHeadDim, kRows, kPipelined><<<grid, kThreads, G::kSmemBytes, stream>>>(a);
  return launch_status("paged_attention");
}

template <typename T, int kHeadDim, int kRows>
Status launch_attention(const LaunchArgs& a, dim3 grid, cudaStream_t stream) {
  return g_variant != AttentionVariant::plain_tiles ? launch_attention_as<T, kHeadDim, kRows, true>(a, grid, stream)
                                                    : launch_attention_as<T, kHeadDim, kRows, false>(a, grid, stream);
}

template <typename T, int kHeadDim>
Status launch_decode(const LaunchArgs& a, dim3 grid, cudaStream_t stream) {
  const unsigned threads = kWarpDecodeWarps * 32;
  if (a.group <= 1) decode_kernel<T, kHeadDim, 1><<<grid, threads, 0, stream>>>(a);
  else if (a.group <= 2) decode_kernel<T, kHeadDim, 2><<<grid, threads, 0, stream>>>(a);
  else if (a.group <= 4) decode_kernel<T, kHeadDim, 4><<<grid, threads, 0, stream>>>(a);
  else decode_kernel<T, kHeadDim, 8><<<grid, threads, 0, stream>>>(a);
  return launch_status("paged_attention decode");
}

template <typename T, int kHeadDim>
Status run_attention(LaunchArgs a, const DecodePlan& plan, cudaStream_t stream) {
  const AttentionBatch& b = a.batch;
  const int64_t kv_heads = a.num_kv_heads;

  // Decode: sequences with one new token, rows = query heads of a group, split context.
  a.min_q_len = 1;
  a.max_q_len = 1;
  a.heads_per_block = std::min<int64_t>(a.group, kDecodeRows);
  a.head_chunks = ceil_div(a.group, a.heads_per_block);
  a.num_splits = plan.num_splits;
  a.partition = plan.partition;
  dim3 grid(static_cast<unsigned>(plan.num_splits), static_cast<unsigned>(kv_heads * a.head_chunks),
            static_cast<unsigned>(b.num_seqs));
  if (g_variant == AttentionVariant::fast && a.group <= 8) {
    LLM_RETURN_IF_ERROR((launch_decode<T, kHeadDim>(a, grid, stream)));  // head_chunks is 1 here
  } else {
    LLM_RETURN_IF_ERROR((launch_attention<T, kHeadDim, kDecodeRows>(a, grid, stream)));
  }
  if (plan.num_splits > 1) {
    combine_kernel<T, kHeadDim><<<dim3(static_cast<unsigned>(b.num_seqs), static_cast<unsigned>(b.num_heads)),
                                  kHeadDim, 0, stream>>>(a);
    LLM_RETURN_IF_ERROR(launch_status("paged_attention combine"));
  }
  if (b.max_query_len <= 1) return Status::Ok();

  // Prefill: sequences with more new tokens, rows = tokens x query heads of a group, unsplit.
  a.min_q_len = 2;
  a.max_q_len = INT64_MAX;
  a.heads_per_block = std::min<int64_t>(a.group, kPrefillRows);
  a.head_chunks = ceil_div(a.group, a.heads_per_block);
  a.num_splits = 1;
  a.partition = std::max<int64_t>(b.max_seq_len, 1);
  const int64_t tiles = ceil_div(b.max_query_len, kPrefillRows / a.heads_per_block);
  grid = dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(kv_heads * a.head_chunks),
              static_cast<unsigned>(b.num_seqs));
  return launch_attention<T, kHeadDim, kPrefillRows>(a, grid, stream);
}

}  // namespace

void set_attention_variant(AttentionVariant v) { g_variant = v; }
AttentionVariant attention_variant() { return g_variant; }
void set_decode_blocks_per_sm(int64_t blocks) { g_warp_decode_blocks_per_sm = std::max<int64_t>(1, blocks); }
const char* attention_variant_name(AttentionVariant v) {
  switch (v) {
    case AttentionVariant::fast: return "fast";
    case AttentionVariant::pipelined_tiles: return "pipelined tiles";
    case AttentionVariant::plain_tiles: return "plain tiles";
  }
  return "?";
}

size_t paged_attention_workspace_bytes(const AttentionBatch& batch, const KVCacheView& cache) {
  const DecodePlan plan = plan_decode(batch, cache);
  if (plan.num_splits == 1) return 0;
  return static_cast<size_t>(plan.num_splits * batch.num_tokens * batch.num_heads * (cache.head_dim + 2)) *
         sizeof(float);
}

Status paged_attention(const void* q, KVCacheView cache, int64_t layer, const AttentionBatch& batch, void* out,
                       void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  auto invalid = [](const std::string& m) { return Status(StatusCode::invalid_argument, "paged_attention: " + m); };
  if (cache.head_dim != 64 && cache.head_dim != 128) return invalid("head_dim must be 64 or 128");
  if (cache.num_kv_heads <= 0 || batch.num_heads % cache.num_kv_heads != 0)
    return invalid("num_heads must be a multiple of num_kv_heads");
  if (batch.num_seqs > 65535) return invalid("at most 65535 sequences per call");
  if (batch.num_tokens == 0 || batch.num_seqs == 0) return Status::Ok();
  const DecodePlan plan = plan_decode(batch, cache);
  const size_t need = paged_attention_workspace_bytes(batch, cache);
  if (workspace_bytes < need) return invalid("workspace of " + std::to_string(need) + " bytes needed");

  LaunchArgs a{};
  a.q = q;
  a.out = out;
  a.pool = cache.data;
  a.strides = PoolStrides(cache);
  a.num_kv_heads = cache.num_kv_heads;
  a.layer = layer;
  a.batch = batch;
  a.group = batch.num_heads / cache.num_kv_heads;
  const size_t partials = static_cast<size_t>(plan.num_splits * batch.num_tokens * batch.num_heads);
  a.part_out = static_cast<float*>(workspace);
  a.part_max = a.part_out ? a.part_out + partials * cache.head_dim : nullptr;
  a.part_sum = a.part_max ? a.part_max + partials : nullptr;
  return dispatch_dtype(cache.dtype, [&](auto tag) {
    using E = decltype(tag);
    return cache.head_dim == 64 ? run_attention<E, 64>(a, plan, stream) : run_attention<E, 128>(a, plan, stream);
  });
}

}  // namespace llm::cuda
