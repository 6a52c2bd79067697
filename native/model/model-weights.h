// model-weights.h: the model's parameters (llama2.c's TransformerWeights) as typed views into
// the memory-mapped safetensors, whole or one tensor-parallel rank's slice of them.
//
// Owns: Model = config + weights + the mappings they point into (+ this rank's copies of the
// column slices, which are not contiguous in the files).
// Stays true: every Tensor's shape was checked against the config and its dtype against
// config.dtype (all weights of one model share one dtype) at load time.
// Tensor parallelism (Megatron's split; load options tp_rank, tp_size; at tp_size 1 every view is
// whole): q/k/v and gate/up by output rows (whole heads: rank r takes query heads
// [r H/tp, (r+1) H/tp) and the kv heads they read), o and down by input columns, each rank adding
// a partial sum that the ranks all-reduce; the o and down biases on rank 0 only, so they are added
// once. With more ranks than kv heads, each kv head is on tp / kv_heads ranks (vLLM's
// replication). lm_head is split by vocabulary rows (RankShard::vocab_*; the ranks gather the
// logits). Embedding and norms are whole on every rank. A rank reads only its slices
// from the mapping (row slices are views into it; column slices are copied).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../kernels/tensor-view.h"
#include "model-config.h"
#include "model-safetensors.h"

namespace llm {

// A read-only 1-D or 2-D view (rows = 1 for vectors), the same type the kernels take.
using Tensor = TensorView;

struct LayerWeights {
  Tensor attn_norm;  // (hidden)                           input_layernorm.weight
  Tensor wq;         // (num_heads * head_dim, hidden)      self_attn.q_proj.weight
  Tensor wk;         // (num_kv_heads * head_dim, hidden)   self_attn.k_proj.weight
  Tensor wv;         // (num_kv_heads * head_dim, hidden)   self_attn.v_proj.weight
  Tensor bq;         // (num_heads * head_dim)  optional    self_attn.q_proj.bias
  Tensor bk;         // (num_kv_heads * head_dim) optional  self_attn.k_proj.bias
  Tensor bv;         // (num_kv_heads * head_dim) optional  self_attn.v_proj.bias
  Tensor wo;         // (hidden, num_heads * head_dim)      self_attn.o_proj.weight
  Tensor bo;         // (hidden)  optional                  self_attn.o_proj.bias (Llama/Qwen3 attention_bias)
  Tensor q_norm;     // (head_dim) optional                 self_attn.q_norm.weight (Qwen3)
  Tensor k_norm;     // (head_dim) optional                 self_attn.k_norm.weight (Qwen3)
  Tensor mlp_norm;   // (hidden)                           post_attention_layernorm.weight
  Tensor w_gate;     // (intermediate, hidden)              mlp.gate_proj.weight
  Tensor w_up;       // (intermediate, hidden)              mlp.up_proj.weight
  Tensor w_down;     // (hidden, intermediate)              mlp.down_proj.weight
  Tensor b_gate;     // (intermediate) optional             mlp.gate_proj.bias (Llama mlp_bias)
  Tensor b_up;       // (intermediate) optional             mlp.up_proj.bias
  Tensor b_down;     // (hidden) optional                   mlp.down_proj.bias
};

struct ModelWeights {
  Tensor embed;       // (vocab, hidden)   model.embed_tokens.weight
  std::vector<LayerWeights> layers;
  Tensor final_norm;  // (hidden)          model.norm.weight
  Tensor lm_head;     // (vocab, hidden)   lm_head.weight, or embed when tied; this rank's rows
};

struct ModelLoadOptions {
  int tp_rank = 0;
  int tp_size = 1;
};

// This rank's share of the model (the whole of it at tp_size 1).
struct RankShard {
  int rank = 0;
  int size = 1;
  int64_t num_heads = 0;     // query heads
  int64_t num_kv_heads = 0;  // kv heads (replicated when ranks outnumber them)
  int64_t first_kv_head = 0;
  int64_t intermediate = 0;  // FFN width
  // lm_head rows [vocab_begin, vocab_begin + vocab_count): this rank's logits (the vocabulary in
  // tp_size parts of ceil(vocab / tp_size), the last one shorter; the whole vocabulary at 1).
  int64_t vocab_begin = 0;
  int64_t vocab_count = 0;
};

// Rank `rank`'s share of a model of config `cfg` split tp_size ways, as load_model takes it;
// ERR_INVALID_ARGUMENT naming the numbers when tp_size does not split the model.
Status plan_rank_shard(const ModelConfig& cfg, int rank, int tp_size, RankShard* shard);

// Rank `rank`'s part of the vocabulary, as RankShard::vocab_begin / vocab_count.
void vocab_part(int64_t vocab, int rank, int size, int64_t* begin, int64_t* count);

struct Model {
  std::string dir;
  ModelConfig config;
  ModelWeights weights;
  RankShard shard;
  std::unique_ptr<SafetensorsModel> files;  // keeps the mappings alive
  std::vector<std::unique_ptr<uint8_t[]>> slices;  // this rank's column slices (o, down) at tp_size > 1
  // Bytes of weights this rank reads per decoded token: every bound tensor once, except that
  // the embedding table is left out (a token reads one row of it); lm_head, tied or not, counts
  // as this rank's rows of it.
  uint64_t weight_bytes = 0;
};

// Loads config + weights from a Hugging Face model directory.
// Biases are bound when the config says they exist: bq/bk/bv for Qwen2 or the attention_bias
// of Llama and Qwen3 (which also brings bo), b_gate/b_up/b_down for Llama's mlp_bias; q_norm
// and k_norm for Qwen3; otherwise they are not present(). Tensors the model does not use (e.g. rotary_emb.inv_freq) are ignored.
// Errors: those of load_model_config and SafetensorsModel::open_dir, then
//   ERR_INVALID_ARGUMENT    bad tp_rank/tp_size, or a tp_size that does not split the model:
//                           it must divide num_attention_heads and intermediate_size, and
//                           divide num_key_value_heads or be a multiple of it (vLLM's rule)
//   ERR_MODEL_TENSOR_MISSING "tensor '<name>' is missing"
//   ERR_MODEL_TENSOR_SHAPE   "tensor '<name>': expected shape [a, b], got [c, d]"
//   ERR_MODEL_TENSOR_DTYPE   "tensor '<name>': dtype f16, but the model is bf16"
Status load_model(const std::string& dir, const ModelLoadOptions& opts, std::unique_ptr<Model>* out);

}  // namespace llm
