// model-weights.cc: binds the Hugging Face tensor names of a Llama-family checkpoint to
// ModelWeights, checking every shape against the config and every dtype against config.dtype.
//
// Names (Llama, Mistral, Qwen2 and Qwen3 share them; Qwen3 adds self_attn.{q,k}_norm.weight):
//   model.embed_tokens.weight                      (vocab, hidden)
//   model.layers.{i}.input_layernorm.weight        (hidden)
//   model.layers.{i}.self_attn.{q,k,v,o}_proj.weight, q/k/v (and Llama's o) _proj.bias
//   model.layers.{i}.post_attention_layernorm.weight
//   model.layers.{i}.mlp.{gate,up,down}_proj.weight (+ .bias with Llama's mlp_bias)
//   model.norm.weight                              (hidden)
//   lm_head.weight                                 (vocab, hidden), absent or ignored when tied
#include "model-weights.h"

#include <algorithm>
#include <cstring>
#include <new>

namespace llm {

namespace {

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Looks tensors up by name and turns them into checked views; counts the bytes it bound.
class Binder {
 public:
  Binder(const SafetensorsModel& files, DType dtype) : files_(files), dtype_(dtype) {}

  Status matrix(const std::string& name, int64_t rows, int64_t cols, Tensor* out) {
    return bind(name, {rows, cols}, out);
  }
  Status vector(const std::string& name, int64_t n, Tensor* out) { return bind(name, {n}, out); }

  // Rows [row0, row0 + n) of a rows x cols matrix: a view (the whole matrix for 0, rows).
  Status matrix_rows(const std::string& name, int64_t rows, int64_t cols, int64_t row0, int64_t n, Tensor* out) {
    LLM_RETURN_IF_ERROR(bind(name, {rows, cols}, out, /*count=*/false));
    out->data = static_cast<const char*>(out->data) + row0 * cols * dtype_size(out->dtype);
    out->rows = n;
    bytes_bound_ += static_cast<uint64_t>(n * cols * dtype_size(out->dtype));
    return Status::Ok();
  }
  // Elements [at, at + n) of a vector of len: a view (the whole vector for 0, len).
  Status vector_slice(const std::string& name, int64_t len, int64_t at, int64_t n, Tensor* out) {
    LLM_RETURN_IF_ERROR(bind(name, {len}, out, /*count=*/false));
    out->data = static_cast<const char*>(out->data) + at * dtype_size(out->dtype);
    out->cols = n;
    bytes_bound_ += static_cast<uint64_t>(n * dtype_size(out->dtype));
    return Status::Ok();
  }
  // Columns [col0, col0 + n) of a rows x cols matrix: the whole matrix is a view; a part of it is
  // copied into `store` (its rows are strided in the file).
  Status matrix_cols(const std::string& name, int64_t rows, int64_t cols, int64_t col0, int64_t n, Tensor* out,
                     std::vector<std::unique_ptr<uint8_t[]>>* store) {
    if (col0 == 0 && n == cols) return matrix(name, rows, cols, out);
    LLM_RETURN_IF_ERROR(bind(name, {rows, cols}, out, /*count=*/false));
    const int64_t e = dtype_size(out->dtype);
    std::unique_ptr<uint8_t[]> copy(new (std::nothrow) uint8_t[static_cast<size_t>(rows * n * e)]);
    if (!copy) return Status(StatusCode::out_of_memory, "cannot copy this rank's slice of '" + name + "'");
    const auto* src = static_cast<const uint8_t*>(out->data);
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(copy.get() + r * n * e, src + (r * cols + col0) * e, static_cast<size_t>(n * e));
    out->data = copy.get();
    out->cols = n;
    store->push_back(std::move(copy));
    bytes_bound_ += static_cast<uint64_t>(rows * n * e);
    return Status::Ok();
  }

  uint64_t bytes_bound() const { return bytes_bound_; }

 private:
  Status bind(const std::string& name, const std::vector<int64_t>& shape, Tensor* out, bool count = true) {
    const TensorInfo* t = files_.find(name);
    if (t == nullptr) return Status(StatusCode::model_tensor_missing, "tensor '" + name + "' is missing");
    if (t->shape != shape) {
      return Status(StatusCode::model_tensor_shape, "tensor '" + name + "': expected shape " +
                                                        shape_string(shape) + ", got " +
                                                        shape_string(t->shape));
    }
    if (t->dtype != dtype_) {
      return Status(StatusCode::model_tensor_dtype, "tensor '" + name + "': dtype " +
                                                        dtype_name(t->dtype) + ", but the model is " +
                                                        dtype_name(dtype_));
    }
    out->data = t->data;
    out->dtype = t->dtype;
    out->rows = shape.size() == 2 ? shape[0] : 1;
    out->cols = shape.back();
    if (count) bytes_bound_ += t->nbytes;
    return Status::Ok();
  }

  const SafetensorsModel& files_;
  DType dtype_;
  uint64_t bytes_bound_ = 0;
};

}  // namespace

// The split of a rank must be whole: query heads and FFN columns divide by tp_size, and kv heads
// either divide by it or divide it (each kv head then on tp / kv ranks), as vLLM requires.
Status plan_rank_shard(const ModelConfig& cfg, int rank, int tp_size, RankShard* shard) {
  ModelLoadOptions opts;
  opts.tp_rank = rank;
  opts.tp_size = tp_size;
  if (opts.tp_size < 1 || opts.tp_rank < 0 || opts.tp_rank >= opts.tp_size) {
    return Status(StatusCode::invalid_argument, "tp_rank " + std::to_string(opts.tp_rank) +
                                                    " is not in [0, tp_size " +
                                                    std::to_string(opts.tp_size) + ")");
  }
  const int64_t tp = opts.tp_size, kv = cfg.num_kv_heads;
  if (cfg.num_heads % tp != 0 || cfg.intermediate_size % tp != 0 || (kv % tp != 0 && tp % kv != 0)) {
    return Status(StatusCode::invalid_argument,
                  "tp_size " + std::to_string(tp) + " does not split this model: it must divide num_attention_heads " +
                      std::to_string(cfg.num_heads) + " and intermediate_size " +
                      std::to_string(cfg.intermediate_size) + ", and divide or be a multiple of num_key_value_heads " +
                      std::to_string(kv));
  }
  shard->rank = opts.tp_rank;
  shard->size = opts.tp_size;
  shard->num_heads = cfg.num_heads / tp;
  shard->num_kv_heads = kv >= tp ? kv / tp : 1;
  shard->first_kv_head = kv >= tp ? opts.tp_rank * (kv / tp) : opts.tp_rank / (tp / kv);
  shard->intermediate = cfg.intermediate_size / tp;
  if (cfg.vocab_size < tp)
    return Status(StatusCode::invalid_argument, "tp_size " + std::to_string(tp) + " exceeds vocab_size " +
                                                    std::to_string(cfg.vocab_size));
  vocab_part(cfg.vocab_size, opts.tp_rank, opts.tp_size, &shard->vocab_begin, &shard->vocab_count);
  return Status::Ok();
}

namespace {

// Layer i's tensors, this rank's slices of them (RankShard): q, k, v, gate, up and their biases
// by rows; o and down by columns; o's and down's biases on rank 0 only.
Status bind_layer(Binder& b, const ModelConfig& cfg, const RankShard& sh, int64_t i, LayerWeights* l,
                  std::vector<std::unique_ptr<uint8_t[]>>* store) {
  const std::string p = "model.layers." + std::to_string(i) + ".";
  const int64_t hidden = cfg.hidden_size, hd = cfg.head_dim;
  const int64_t q_dim = cfg.num_heads * hd, kv_dim = cfg.num_kv_heads * hd;
  const int64_t inter = cfg.intermediate_size;
  const int64_t q0 = sh.rank * sh.num_heads * hd, nq = sh.num_heads * hd;  // this rank's q rows
  const int64_t k0 = sh.first_kv_head * hd, nk = sh.num_kv_heads * hd;     // its k and v rows
  const int64_t f0 = sh.rank * sh.intermediate, nf = sh.intermediate;      // its FFN columns

  LLM_RETURN_IF_ERROR(b.vector(p + "input_layernorm.weight", hidden, &l->attn_norm));
  LLM_RETURN_IF_ERROR(b.matrix_rows(p + "self_attn.q_proj.weight", q_dim, hidden, q0, nq, &l->wq));
  LLM_RETURN_IF_ERROR(b.matrix_rows(p + "self_attn.k_proj.weight", kv_dim, hidden, k0, nk, &l->wk));
  LLM_RETURN_IF_ERROR(b.matrix_rows(p + "self_attn.v_proj.weight", kv_dim, hidden, k0, nk, &l->wv));
  LLM_RETURN_IF_ERROR(b.matrix_cols(p + "self_attn.o_proj.weight", hidden, q_dim, q0, nq, &l->wo, store));
  if (cfg.attention_bias) {
    LLM_RETURN_IF_ERROR(b.vector_slice(p + "self_attn.q_proj.bias", q_dim, q0, nq, &l->bq));
    LLM_RETURN_IF_ERROR(b.vector_slice(p + "self_attn.k_proj.bias", kv_dim, k0, nk, &l->bk));
    LLM_RETURN_IF_ERROR(b.vector_slice(p + "self_attn.v_proj.bias", kv_dim, k0, nk, &l->bv));
    // The attention_bias of Llama and Qwen3 covers o_proj too; Qwen2's o_proj has none.
    if ((cfg.arch == ModelArch::llama || cfg.arch == ModelArch::qwen3) && sh.rank == 0) {
      LLM_RETURN_IF_ERROR(b.vector(p + "self_attn.o_proj.bias", hidden, &l->bo));
    }
  }
  if (cfg.qk_norm) {
    LLM_RETURN_IF_ERROR(b.vector(p + "self_attn.q_norm.weight", cfg.head_dim, &l->q_norm));
    LLM_RETURN_IF_ERROR(b.vector(p + "self_attn.k_norm.weight", cfg.head_dim, &l->k_norm));
  }
  LLM_RETURN_IF_ERROR(b.vector(p + "post_attention_layernorm.weight", hidden, &l->mlp_norm));
  LLM_RETURN_IF_ERROR(b.matrix_rows(p + "mlp.gate_proj.weight", inter, hidden, f0, nf, &l->w_gate));
  LLM_RETURN_IF_ERROR(b.matrix_rows(p + "mlp.up_proj.weight", inter, hidden, f0, nf, &l->w_up));
  LLM_RETURN_IF_ERROR(b.matrix_cols(p + "mlp.down_proj.weight", hidden, inter, f0, nf, &l->w_down, store));
  if (cfg.mlp_bias) {
    LLM_RETURN_IF_ERROR(b.vector_slice(p + "mlp.gate_proj.bias", inter, f0, nf, &l->b_gate));
    LLM_RETURN_IF_ERROR(b.vector_slice(p + "mlp.up_proj.bias", inter, f0, nf, &l->b_up));
    if (sh.rank == 0) LLM_RETURN_IF_ERROR(b.vector(p + "mlp.down_proj.bias", hidden, &l->b_down));
  }
  return Status::Ok();
}

}  // namespace

void vocab_part(int64_t vocab, int rank, int size, int64_t* begin, int64_t* count) {
  const int64_t per = (vocab + size - 1) / size;
  *begin = std::min<int64_t>(vocab, rank * per);
  *count = std::min<int64_t>(per, vocab - *begin);
}

Status load_model(const std::string& dir, const ModelLoadOptions& opts, std::unique_ptr<Model>* out) {
  std::unique_ptr<Model> m(new Model());
  m->dir = dir;
  ModelConfig& cfg = m->config;
  LLM_RETURN_IF_ERROR(load_model_config(dir, &cfg));
  LLM_RETURN_IF_ERROR(plan_rank_shard(cfg, opts.tp_rank, opts.tp_size, &m->shard));
  LLM_RETURN_IF_ERROR(SafetensorsModel::open_dir(dir, &m->files));

  const std::string embed_name = "model.embed_tokens.weight";
  if (!cfg.dtype_from_config) {  // no torch_dtype: the embedding table decides
    const TensorInfo* embed = m->files->find(embed_name);
    if (embed == nullptr) return Status(StatusCode::model_tensor_missing, "tensor '" + embed_name + "' is missing");
    cfg.dtype = embed->dtype;
  }

  ModelWeights& w = m->weights;
  Binder b(*m->files, cfg.dtype);
  LLM_RETURN_IF_ERROR(b.matrix(embed_name, cfg.vocab_size, cfg.hidden_size, &w.embed));
  const uint64_t embed_bytes = b.bytes_bound();
  w.layers.resize(static_cast<size_t>(cfg.num_layers));
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    LLM_RETURN_IF_ERROR(bind_layer(b, cfg, m->shard, i, &w.layers[static_cast<size_t>(i)], &m->slices));
  }
  LLM_RETURN_IF_ERROR(b.vector("model.norm.weight", cfg.hidden_size, &w.final_norm));
  const RankShard& sh = m->shard;
  if (cfg.tie_word_embeddings) {
    // A stray lm_head.weight in a tied checkpoint is ignored.
    LLM_RETURN_IF_ERROR(b.matrix_rows(embed_name, cfg.vocab_size, cfg.hidden_size, sh.vocab_begin, sh.vocab_count,
                                      &w.lm_head));
  } else {
    LLM_RETURN_IF_ERROR(b.matrix_rows("lm_head.weight", cfg.vocab_size, cfg.hidden_size, sh.vocab_begin,
                                      sh.vocab_count, &w.lm_head));
  }
  m->weight_bytes = b.bytes_bound() - embed_bytes;  // lm_head (tied or not) counted as its rows
  *out = std::move(m);
  return Status::Ok();
}

}  // namespace llm
