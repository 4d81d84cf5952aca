"""One module per fine-tuning objective (protocol.md, section 4); `vlm_eval.finetune.OBJECTIVES` names them."""
