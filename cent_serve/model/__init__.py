"""The reference Llama model: weights, layers, tokenizer, sampling (no devices here)."""
from cent_serve.model.reference import KVCache, LlamaModel
from cent_serve.model.sampling import SamplingParams, make_generator, sample
from cent_serve.model.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer
from cent_serve.config.hf_config import model_config_from_hf
from cent_serve.model.hf_checkpoint import load_weights, save_hf_checkpoint
from cent_serve.model.weights import LlamaWeights, random_weights

__all__ = ["KVCache", "LlamaModel", "SamplingParams", "make_generator", "sample", "ByteTokenizer",
           "HFTokenizer", "load_tokenizer", "LlamaWeights", "load_weights", "model_config_from_hf",
           "random_weights", "save_hf_checkpoint"]
