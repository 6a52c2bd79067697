// model-weights.cc: binds the Hugging Face tensor names of a Llama-family checkpoint to
// ModelWeights, checking every shape against the config and every dtype against config.dtype.
//
// Names (Llama, Mistral and Qwen2 share them):
//   model.embed_tokens.weight                      (vocab, hidden)
//   model.layers.{i}.input_layernorm.weight        (hidden)
//   model.layers.{i}.self_attn.{q,k,v,o}_proj.weight, q/k/v (and Llama's o) _proj.bias
//   model.layers.{i}.post_attention_layernorm.weight
//   model.layers.{i}.mlp.{gate,up,down}_proj.weight (+ .bias with Llama's mlp_bias)
//   model.norm.weight                              (hidden)
//   lm_head.weight                                 (vocab, hidden), absent or ignored when tied
#include "model-weights.h"

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

  uint64_t bytes_bound() const { return bytes_bound_; }

 private:
  Status bind(const std::string& name, const std::vector<int64_t>& shape, Tensor* out) {
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
    bytes_bound_ += t->nbytes;
    return Status::Ok();
  }

  const SafetensorsModel& files_;
  DType dtype_;
  uint64_t bytes_bound_ = 0;
};

// Every split a rank would take must be whole: heads (q and kv) and the FFN width.
Status check_tensor_parallel(const ModelLoadOptions& opts, const ModelConfig& cfg) {
  if (opts.tp_size < 1 || opts.tp_rank < 0 || opts.tp_rank >= opts.tp_size) {
    return Status(StatusCode::invalid_argument, "tp_rank " + std::to_string(opts.tp_rank) +
                                                    " is not in [0, tp_size " +
                                                    std::to_string(opts.tp_size) + ")");
  }
  const int64_t tp = opts.tp_size;
  if (cfg.num_heads % tp != 0 || cfg.num_kv_heads % tp != 0 || cfg.intermediate_size % tp != 0) {
    return Status(StatusCode::invalid_argument,
                  "tp_size " + std::to_string(tp) + " does not divide num_attention_heads " +
                      std::to_string(cfg.num_heads) + ", num_key_value_heads " +
                      std::to_string(cfg.num_kv_heads) + " and intermediate_size " +
                      std::to_string(cfg.intermediate_size));
  }
  if (tp != 1) {
    return Status(StatusCode::invalid_argument, "tensor parallelism is not implemented yet (tp_size " +
                                                    std::to_string(tp) + ")");
  }
  return Status::Ok();
}

Status bind_layer(Binder& b, const ModelConfig& cfg, int64_t i, LayerWeights* l) {
  const std::string p = "model.layers." + std::to_string(i) + ".";
  const int64_t hidden = cfg.hidden_size;
  const int64_t q_dim = cfg.num_heads * cfg.head_dim;
  const int64_t kv_dim = cfg.num_kv_heads * cfg.head_dim;
  const int64_t inter = cfg.intermediate_size;

  LLM_RETURN_IF_ERROR(b.vector(p + "input_layernorm.weight", hidden, &l->attn_norm));
  LLM_RETURN_IF_ERROR(b.matrix(p + "self_attn.q_proj.weight", q_dim, hidden, &l->wq));
  LLM_RETURN_IF_ERROR(b.matrix(p + "self_attn.k_proj.weight", kv_dim, hidden, &l->wk));
  LLM_RETURN_IF_ERROR(b.matrix(p + "self_attn.v_proj.weight", kv_dim, hidden, &l->wv));
  LLM_RETURN_IF_ERROR(b.matrix(p + "self_attn.o_proj.weight", hidden, q_dim, &l->wo));
  if (cfg.attention_bias) {
    LLM_RETURN_IF_ERROR(b.vector(p + "self_attn.q_proj.bias", q_dim, &l->bq));
    LLM_RETURN_IF_ERROR(b.vector(p + "self_attn.k_proj.bias", kv_dim, &l->bk));
    LLM_RETURN_IF_ERROR(b.vector(p + "self_attn.v_proj.bias", kv_dim, &l->bv));
    // The attention_bias of Llama and Qwen3 covers o_proj too; Qwen2's o_proj has none.
    if (cfg.arch == ModelArch::llama || cfg.arch == ModelArch::qwen3) {
      LLM_RETURN_IF_ERROR(b.vector(p + "self_attn.o_proj.bias", hidden, &l->bo));
    }
  }
  if (cfg.qk_norm) {
    LLM_RETURN_IF_ERROR(b.vector(p + "self_attn.q_norm.weight", cfg.head_dim, &l->q_norm));
    LLM_RETURN_IF_ERROR(b.vector(p + "self_attn.k_norm.weight", cfg.head_dim, &l->k_norm));
  }
  LLM_RETURN_IF_ERROR(b.vector(p + "post_attention_layernorm.weight", hidden, &l->mlp_norm));
  LLM_RETURN_IF_ERROR(b.matrix(p + "mlp.gate_proj.weight", inter, hidden, &l->w_gate));
  LLM_RETURN_IF_ERROR(b.matrix(p + "mlp.up_proj.weight", inter, hidden, &l->w_up));
  LLM_RETURN_IF_ERROR(b.matrix(p + "mlp.down_proj.weight", hidden, inter, &l->w_down));
  if (cfg.mlp_bias) {
    LLM_RETURN_IF_ERROR(b.vector(p + "mlp.gate_proj.bias", inter, &l->b_gate));
    LLM_RETURN_IF_ERROR(b.vector(p + "mlp.up_proj.bias", inter, &l->b_up));
    LLM_RETURN_IF_ERROR(b.vector(p + "mlp.down_proj.bias", hidden, &l->b_down));
  }
  return Status::Ok();
}

}  // namespace

Status load_model(const std::string& dir, const ModelLoadOptions& opts, std::unique_ptr<Model>* out) {
  std::unique_ptr<Model> m(new Model());
  m->dir = dir;
  ModelConfig& cfg = m->config;
  LLM_RETURN_IF_ERROR(load_model_config(dir, &cfg));
  LLM_RETURN_IF_ERROR(check_tensor_parallel(opts, cfg));
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
    LLM_RETURN_IF_ERROR(bind_layer(b, cfg, i, &w.layers[static_cast<size_t>(i)]));
  }
  LLM_RETURN_IF_ERROR(b.vector("model.norm.weight", cfg.hidden_size, &w.final_norm));
  if (cfg.tie_word_embeddings) {
    w.lm_head = w.embed;  // a stray lm_head.weight in a tied checkpoint is ignored
  } else {
    LLM_RETURN_IF_ERROR(b.matrix("lm_head.weight", cfg.vocab_size, cfg.hidden_size, &w.lm_head));
  }
  m->weight_bytes = b.bytes_bound() - (cfg.tie_word_embeddings ? 0 : embed_bytes);
  *out = std::move(m);
  return Status::Ok();
}

}  // namespace llm
