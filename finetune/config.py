"""
The settings of a fine-tuning run, read from the command line by machinery.config.parse_config.
"""
from dataclasses import dataclass

from machinery.config import check_fields, opt


@dataclass
class FinetuneConfig:
    # what to run (the command line's paths)
    task: str = opt("SST-2", "a GLUE task, 'imdb' or 'squad'")
    data: str = opt("", "GLUE root or task folder; the aclImdb folder")
    train_file: str = opt("", "SQuAD json files")
    eval_file: str = opt("", "SQuAD: the json file scored (train_file: the one trained on)")
    model: str = opt("", "a Hugging Face folder or Hub name (hf.load_pretrained), or a save_finetuned folder")
    vocab: str = opt("", "vocab.txt / tokenizer.json (default: the model folder's)")
    teacher: str = opt("", "a save_finetuned folder: task distillation, 'DistilBERT (D)'")
    out: str = opt("", "results JSON and fine-tuned models go here (nothing saved when empty)")
    name: str = opt("", "the model's name in results (default: the model folder's name)")
    seeds: str = opt("", "'1,2,3': one run per seed, the median reported (default: seed)")
    save: bool = opt(True, "save each run's model under out/")
    # optimisation (BERT's fine-tuning recipe)
    lr: float = opt(5e-5, "peak learning rate", range="> 0")
    batch_size: int = opt(32, "examples per step", range=">= 1")
    epochs: float = opt(3.0, "passes over the training examples", range="> 0")
    max_steps: int | None = opt(None, "overrides epochs", range=">= 1")
    warmup: float = opt(0.1, "fraction of the steps, linear warm-up then linear decay to 0", range="[0, 1)")
    weight_decay: float = opt(0.01, "AdamW weight decay (never on biases and LayerNorms)", range=">= 0")
    grad_clip: float = opt(1.0, "gradient norm clipping", range="> 0")
    max_len: int = opt(0, "0: 128 for GLUE, 384 for SQuAD, 512 for IMDb", range=">= 0")
    seed: int = opt(42, "seed of the head, the data order and dropout (one run; --seeds for several)",
                    range="[0, 2**63)")
    eval_batch_size: int = opt(128, "examples per forward pass when evaluating", range=">= 1")
    train_limit: int | None = opt(None, "keep a fixed random subset of this many training examples",
                                  range=">= 1")
    eval_limit: int | None = opt(None, "evaluate on the first this many dev examples only (quick runs)",
                                 range=">= 1")
    eval_every: int = opt(0, "also score the dev set every this many steps: a learning curve in the results "
                             "(0: only at the end)", range=">= 0")
    holdout: float = opt(0.0, "score on this fraction of the training rows, held out from training, instead of "
                              "the dev set: for choosing lr and epochs without the dev set (0: the dev set)",
                         range="[0, 1)")
    log_every: int = opt(100, "a progress line every N steps (0: none)", range=">= 0")
    device: str = opt("auto", "auto | cpu | cuda")
    dtype: str = opt("auto", "auto (bf16 autocast where it is fast: device.choose_dtype; float32 where that "
                             "answers float16, fine-tuning having no GradScaler) | float32 | bfloat16",
                      choices=("auto", "float32", "bfloat16"))
    standardize: bool = opt(True, "regression: train on z-scored targets, the output layer rescaled after "
                                  "(finetune.target_scale)")
    style: str = opt("auto", "classifier head: auto | bert | distilbert", choices=("auto", "bert", "distilbert"))
    pool: str = opt("cls", "what the DistilBERT head reads: cls (h_[CLS], the paper's) | mean (the mean of the "
                           "real tokens' last states; for students of a mean-pooled teacher such as MiniLM)",
                     choices=("cls", "mean"))
    # task distillation
    temperature: float = opt(2.0, "softmax temperature of the distillation term", range="> 0")
    alpha: float = opt(0.5, "weight of the distillation term; 1 - alpha on the labels", range="[0, 1]")
    # SQuAD
    doc_stride: int = opt(128, "tokens between the starts of a long context's windows", range=">= 1")
    max_query: int = opt(64, "question tokens kept", range=">= 1")
    max_answer: int = opt(30, "longest answer span, in tokens", range=">= 1")

    def __post_init__(self):
        """Each setting within what opt(range=, choices=) allows: a ValueError of one line naming it."""
        check_fields(self)
        seeds = [s.strip() for s in self.seeds.split(",") if s.strip()]
        if not all(s.isdigit() for s in seeds):
            raise ValueError(f"--seeds={self.seeds!r}: expected seeds >= 0 separated by commas, e.g. 1,2,3")
