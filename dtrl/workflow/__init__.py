"""Layer 7: workflow tools: one run end to end (finetune), the cost planner, grid status."""
