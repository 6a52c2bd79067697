// cpu-reference.cc: the reference CPU kernels (see cpu-kernels.h).
//
// Plain C++ that -O3 vectorizes: weights and KV rows are converted to fp32 into small
// per-thread scratch buffers, then every inner loop is over contiguous float arrays.
// Parallelism:
//   matmul           tiles of (16 weight rows) x (64 input rows), weight-tile-major
//   rmsnorm, rope, embedding, cache_write   rows / tokens
//   paged_attention  (token, query head) pairs
//   silu_mul         elements
// Inputs are trusted: the model runner validates token ids, slots and block tables before
// any kernel runs.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu-kernels.h"

namespace llm::cpu {

namespace {

// ---------------------------------------------------------------------------------------------
// Helpers

// out[0, count) = data[offset, offset + count) as fp32.
void load_row_f32(const void* data, DType dtype, int64_t offset, int64_t count, float* out) {
  switch (dtype) {
    case DType::f32: {
      const float* p = static_cast<const float*>(data) + offset;
      std::copy(p, p + count, out);
      break;
    }
    case DType::f16: {
      const uint16_t* p = static_cast<const uint16_t*>(data) + offset;
      for (int64_t i = 0; i < count; ++i) out[i] = f16_to_f32(p[i]);
      break;
    }
    case DType::bf16: {
      const uint16_t* p = static_cast<const uint16_t*>(data) + offset;
      for (int64_t i = 0; i < count; ++i) out[i] = bf16_to_f32(p[i]);
      break;
    }
  }
}

// data[offset, offset + count) = in[0, count), rounded to `dtype`.
void store_row_f32(const float* in, int64_t count, void* data, DType dtype, int64_t offset) {
  switch (dtype) {
    case DType::f32: std::copy(in, in + count, static_cast<float*>(data) + offset); break;
    case DType::f16: {
      uint16_t* p = static_cast<uint16_t*>(data) + offset;
      for (int64_t i = 0; i < count; ++i) p[i] = f32_to_f16(in[i]);
      break;
    }
    case DType::bf16: {
      uint16_t* p = static_cast<uint16_t*>(data) + offset;
      for (int64_t i = 0; i < count; ++i) p[i] = f32_to_bf16(in[i]);
      break;
    }
  }
}

// A row of `count` elements at `offset` as fp32: the row itself when the data is f32,
// else converted into `scratch` (grown as needed).
const float* row_f32(const void* data, DType dtype, int64_t offset, int64_t count,
                     std::vector<float>& scratch) {
  if (dtype == DType::f32) return static_cast<const float*>(data) + offset;
  if (static_cast<int64_t>(scratch.size()) < count) scratch.resize(static_cast<size_t>(count));
  load_row_f32(data, dtype, offset, count, scratch.data());
  return scratch.data();
}

// sum(a[i] * b[i]) in fp32 with 8 independent partial sums (the compiler keeps them in vector
// lanes; a single running sum would be a serial dependency it may not reorder).
float dot_f32(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float sum = 0.0f;
  for (; i < n; ++i) sum += a[i] * b[i];
  for (int j = 0; j < 8; ++j) sum += acc[j];
  return sum;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// matmul: y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N])
//
// Work is cut into tiles of kTileN weight rows by kTileM input rows. Item i is
// (n_tile = i / m_tiles, m_tile = i % m_tiles), so a thread's contiguous range of items walks
// all input rows of one weight tile before the next: it converts each weight tile to fp32 once,
// keeps it hot (kTileN x K floats) and streams the input rows past it.

constexpr int64_t kTileN = 16;
constexpr int64_t kTileM = 64;

void matmul_reference(ThreadPool& pool, const float* x, int64_t M, const TensorView& w,
                      const TensorView* bias, float* y) {
  const int64_t N = w.rows;
  const int64_t K = w.cols;
  const int64_t m_tiles = ceil_div(M, kTileM);
  const int64_t n_tiles = ceil_div(N, kTileN);
  pool.parallel_for(n_tiles * m_tiles, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> w_tile_buf;  // (kTileN, K) weight rows as fp32
    thread_local std::vector<float> bias_buf;    // (kTileN) bias as fp32
    int64_t loaded_tile = -1;
    const float* w_tile = nullptr;               // (n1 - n0, K)
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n_tile = item / m_tiles, m_tile = item % m_tiles;
      const int64_t n0 = n_tile * kTileN, n1 = std::min(N, n0 + kTileN);
      const int64_t m0 = m_tile * kTileM, m1 = std::min(M, m0 + kTileM);
      if (n_tile != loaded_tile) {
        w_tile = row_f32(w.data, w.dtype, n0 * K, (n1 - n0) * K, w_tile_buf);
        bias_buf.assign(static_cast<size_t>(kTileN), 0.0f);
        if (bias && bias->present()) load_row_f32(bias->data, bias->dtype, n0, n1 - n0, bias_buf.data());
        loaded_tile = n_tile;
      }
      for (int64_t m = m0; m < m1; ++m) {
        const float* xm = x + m * K;  // (K)
        float* ym = y + m * N;        // (N)
        for (int64_t n = n0; n < n1; ++n) ym[n] = dot_f32(xm, w_tile + (n - n0) * K, K) + bias_buf[n - n0];
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// rmsnorm: out[m, :] = x[m, :] / sqrt(mean(x[m, :]^2) + eps) * weight

void rmsnorm_reference(ThreadPool& pool, const float* x, const TensorView& weight, float eps,
                       int64_t M, int64_t D, float* out) {
  pool.parallel_for(M, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> weight_buf;  // (D)
    const float* g = row_f32(weight.data, weight.dtype, 0, D, weight_buf);
    for (int64_t m = begin; m < end; ++m) {
      const float* xm = x + m * D;
      float* om = out + m * D;
      // inv_rms = 1 / sqrt(mean(x^2) + eps)
      const float inv_rms = 1.0f / std::sqrt(dot_f32(xm, xm, D) / static_cast<float>(D) + eps);
      // out = x * inv_rms * g
      for (int64_t d = 0; d < D; ++d) om[d] = xm[d] * inv_rms * g[d];
    }
  });
}

// ---------------------------------------------------------------------------------------------
// rope: for each head and i < head_dim / 2, with angle = position * inv_freq[i],
// cos = scale * cos(angle) and sin = scale * sin(angle) (transformers' attention_scaling):
//   (x[i], x[i + half]) <- (x[i] cos - x[i + half] sin, x[i + half] cos + x[i] sin)

void rotate_heads(float* x, int64_t num_heads, int64_t head_dim, const float* cos_a, const float* sin_a) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < num_heads; ++h) {
    float* lo = x + h * head_dim;  // (half) first halves
    float* hi = lo + half;         // (half) second halves
    for (int64_t i = 0; i < half; ++i) {
      const float a = lo[i], b = hi[i];
      lo[i] = a * cos_a[i] - b * sin_a[i];
      hi[i] = b * cos_a[i] + a * sin_a[i];
    }
  }
}

void rope_reference(ThreadPool& pool, float* q, float* k, const int32_t* positions, int64_t T,
                    int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, const float* inv_freq, float scale) {
  const int64_t half = head_dim / 2;
  pool.parallel_for(T, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> cos_sin;  // (2, half) cos then sin of this token's angles
    cos_sin.resize(static_cast<size_t>(2 * half));
    float* cos_a = cos_sin.data();
    float* sin_a = cos_a + half;
    for (int64_t t = begin; t < end; ++t) {
      // angle_i = pos * inv_freq_i, in fp32 like Hugging Face
      for (int64_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(positions[t]) * inv_freq[i];
        cos_a[i] = std::cos(angle) * scale;
        sin_a[i] = std::sin(angle) * scale;
      }
      rotate_heads(q + t * num_heads * head_dim, num_heads, head_dim, cos_a, sin_a);
      rotate_heads(k + t * num_kv_heads * head_dim, num_kv_heads, head_dim, cos_a, sin_a);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// silu_mul: out = gate * sigmoid(gate) * up

void silu_mul_reference(ThreadPool& pool, const float* gate, const float* up, float* out, int64_t n) {
  pool.parallel_for(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  });
}

// ---------------------------------------------------------------------------------------------
// embedding: out[t, :] = table[ids[t], :]

void embedding_reference(ThreadPool& pool, const TensorView& table, const int32_t* ids, int64_t T,
                         float* out) {
  const int64_t D = table.cols;
  pool.parallel_for(T, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) load_row_f32(table.data, table.dtype, ids[t] * D, D, out + t * D);
  });
}

// ---------------------------------------------------------------------------------------------
// cache_write: pool[slot -> (block, offset)][layer][K | V] = k[t], v[t]

void cache_write_reference(ThreadPool& pool, const float* k, const float* v, const int64_t* slot_mapping,
                           int64_t T, KVCacheView cache, int64_t layer) {
  const int64_t row = cache.token_stride();  // num_kv_heads * head_dim
  pool.parallel_for(T, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slot = slot_mapping[t];
      if (slot < 0) continue;  // padding
      const int64_t block_id = slot / cache.block_size, offset = slot % cache.block_size;
      store_row_f32(k + t * row, row, cache.data, cache.dtype, cache.offset(block_id, layer, 0, offset));
      store_row_f32(v + t * row, row, cache.data, cache.dtype, cache.offset(block_id, layer, 1, offset));
    }
  });
}

// ---------------------------------------------------------------------------------------------
// paged_attention: for query token t of sequence s at position p, query head h, kv head
// kvh = h / (num_heads / num_kv_heads), and keys j in [first, p] (first = p - window + 1 with a
// sliding window, else 0):
//   score_j = scale * q[t, h] . K[j, kvh]
//   out[t, h] = sum_j softmax(score)_j * V[j, kvh]
// K[j] and V[j] live in block block_tables[s][j / block_size] at offset j % block_size.

void paged_attention_reference(ThreadPool& pool, const float* q, KVCacheView cache, int64_t layer,
                               const AttentionBatch& batch, float* out) {
  const int64_t H = batch.num_heads;
  const int64_t head_dim = cache.head_dim;
  const int64_t group = H / cache.num_kv_heads;  // query heads per kv head
  const int64_t T = batch.query_start_loc[batch.num_seqs];
  const int32_t* qsl_begin = batch.query_start_loc;
  const int32_t* qsl_end = batch.query_start_loc + batch.num_seqs + 1;
  pool.parallel_for(T * H, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;  // (context) scores, then unnormalised weights
    thread_local std::vector<float> k_buf;   // (head_dim) one K row as fp32
    thread_local std::vector<float> v_buf;   // (head_dim) one V row as fp32
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / H, h = item % H, kvh = h / group;
      // Sequence s owns token t: the last s with query_start_loc[s] <= t.
      const int64_t s = (std::upper_bound(qsl_begin, qsl_end, static_cast<int32_t>(t)) - qsl_begin) - 1;
      const int64_t q_len = qsl_begin[s + 1] - qsl_begin[s];
      const int64_t q_pos = batch.seq_lens[s] - q_len + (t - qsl_begin[s]);
      const int64_t first = batch.sliding_window > 0 ? std::max<int64_t>(0, q_pos - batch.sliding_window + 1) : 0;
      const int64_t n_ctx = q_pos + 1 - first;
      const int32_t* block_table = batch.block_tables + s * batch.max_blocks_per_seq;
      const float* qh = q + (t * H + h) * head_dim;  // (head_dim)
      float* oh = out + (t * H + h) * head_dim;      // (head_dim)
      if (static_cast<int64_t>(scores.size()) < n_ctx) scores.resize(static_cast<size_t>(n_ctx));

      // Element offset of position j's K (is_value 0) or V (1) row for this kv head.
      auto kv_offset = [&](int64_t j, int is_value) {
        return cache.offset(block_table[j / cache.block_size], layer, is_value, j % cache.block_size) +
               kvh * head_dim;
      };

      // score_j = scale * q . k_j; max_score = max_j score_j
      float max_score = -INFINITY;
      for (int64_t j = first; j <= q_pos; ++j) {
        const float* kj = row_f32(cache.data, cache.dtype, kv_offset(j, 0), head_dim, k_buf);
        const float score = batch.scale * dot_f32(qh, kj, head_dim);
        scores[j - first] = score;
        max_score = std::max(max_score, score);
      }
      // weight_j = exp(score_j - max_score); sum = sum_j weight_j
      float sum = 0.0f;
      for (int64_t c = 0; c < n_ctx; ++c) {
        scores[c] = std::exp(scores[c] - max_score);
        sum += scores[c];
      }
      // out = sum_j weight_j * v_j / sum
      std::fill(oh, oh + head_dim, 0.0f);
      for (int64_t j = first; j <= q_pos; ++j) {
        const float* vj = row_f32(cache.data, cache.dtype, kv_offset(j, 1), head_dim, v_buf);
        const float weight = scores[j - first];
        for (int64_t d = 0; d < head_dim; ++d) oh[d] += weight * vj[d];
      }
      const float inv_sum = 1.0f / sum;
      for (int64_t d = 0; d < head_dim; ++d) oh[d] *= inv_sum;
    }
  });
}

}  // namespace

const CpuKernels& cpu_reference_kernels() {
  static const CpuKernels table = {
      "reference",
      matmul_reference,
      rmsnorm_reference,
      rope_reference,
      silu_mul_reference,
      embedding_reference,
      cache_write_reference,
      paged_attention_reference,
  };
  return table;
}

}  // namespace llm::cpu
