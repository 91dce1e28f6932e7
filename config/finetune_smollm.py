# Fine-tune Hugging Face's SmolLM2-135M (Llama blocks: RMSNorm, SwiGLU, grouped-query attention, no
# biases) into a chat model on DailyDialog, in SmolLM2's own tokens:
#   python data/dailydialog/prepare.py --tokenizer=SmolLM2-135M --out_dir=data/dailydialog_smollm
#   python train.py config/finetune_smollm.py
# then chat with it: python sample.py --out_dir=out-finetune-smollm --interactive
out_dir = 'out-finetune-smollm'
dataset = 'dailydialog_smollm'  # train.py refuses data in another tokenizer than the model's
init_from = 'SmolLM2-135M'  # or 'SmolLM2-360M', or a local Llama-family folder
train_on = 'B'  # the loss on the model's side only, as it will chat: A's turns are the user's

# 4 x 8 x 512 = 16,384 tokens per step; a dialogue is a few hundred tokens
gradient_accumulation_steps = 4
batch_size = 8
block_size = 512

# a small dataset: a few epochs at a small constant rate, keeping the best val loss (it overfits soon)
max_iters = 300
eval_interval = 25
eval_iters = 40
always_save_checkpoint = False
keep_last = 0  # best.pt and ckpt.pt are enough for a short finetune
eval_sample = 'Hi! What are you doing this weekend?'  # the model's reply, printed at every eval
learning_rate = 5e-5  # small steps: a few thousand dialogues should adjust the pretrained model, not overwrite it
decay_lr = False
dropout = 0.0  # SmolLM2 was pretrained without dropout
