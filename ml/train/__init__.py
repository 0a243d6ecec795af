"""Training loops: Face Score (ImageReward fine-tuned on face pairs) and DM fine-tuning.

Plain PyTorch + diffusers/peft; nothing here imports Django. Each loop takes its inputs as Python
objects, writes checkpoints under an output folder, reports through callbacks and stops cleanly
when asked to (the job layer turns those into progress rows and cancellation).
"""
