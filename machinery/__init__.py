"""
The machinery the lesson does not need to read: Hugging Face's file formats (hf) and downloads (hub), tokenizer
files (tokenizer), checkpoints and resuming (checkpoint), progress, metrics and stop signals (logs), the
fused L_ce + L_mlm head (fused_head), the command line (config), the device and precision (device), and
files written atomically (files). The lesson itself is in model.py, losses.py, data.py, train.py, eval.py.
"""
