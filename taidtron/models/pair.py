"""The distillation pair: this rank's pipeline stage of the student and of the frozen teacher, run as one module
so megatron-core's pipeline schedules move both activations between stages.

Between stages the two hidden states travel concatenated along the hidden dimension:
    [seq, micro_batch, h_student + h_teacher]  (seq / tp with sequence parallelism)
The teacher half is detached on arrival, so only the student learns; the backward pass sends only the student's
half of the gradient, [seq, micro_batch, h_student] (`taidtron.overrides.pipeline`).
On the last stage the pair returns both models' vocab-sharded logits, [micro_batch, seq, V_padded / tp] each.
Without a teacher (an objective that needs none, e.g. `taid.loss=lm`) the pair is the student alone and returns
(student logits, None).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.module import MegatronModule


class DistillationPair(MegatronModule):
    def __init__(self, student: MegatronModule, teacher: MegatronModule | None, config):
        super().__init__(config=config)
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self.student_hidden = student.config.hidden_size
        self.teacher_hidden = teacher.config.hidden_size if teacher is not None else 0
        # megatron's finalize_model_grads looks these up on the wrapped model to sync tied embeddings across
        # the first and last stages; they are the student's.
        self.model_type = student.model_type
        self.pre_process = student.pre_process
        self.post_process = student.post_process
        self.share_embeddings_and_output_weights = student.share_embeddings_and_output_weights

    def shared_embedding_or_output_weight(self):
        return self.student.shared_embedding_or_output_weight()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: no dropout, whatever the trainer asks of the student
        return self

    def set_input_tensor(self, input_tensor) -> None:
        """Called by megatron's schedules on every stage but the first with the received activation."""
        if isinstance(input_tensor, list):
            assert len(input_tensor) == 1
            input_tensor = input_tensor[0]
        if self.teacher is None:
            self.student.set_input_tensor(input_tensor)
            return
        if input_tensor is None:
            self.student.set_input_tensor(None)
            self.teacher.set_input_tensor(None)
            return
        student_in, teacher_in = torch.split(input_tensor, [self.student_hidden, self.teacher_hidden], dim=-1)
        self.student.set_input_tensor(student_in)
        self.teacher.set_input_tensor(teacher_in.detach())

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask=None):
        if self.teacher is None:
            student_out = self.student(input_ids, position_ids, attention_mask)
            return (student_out, None) if self.post_process else student_out
        with torch.no_grad():
            teacher_out = self.teacher(input_ids, position_ids, attention_mask)
        student_out = self.student(input_ids, position_ids, attention_mask)
        if self.post_process:
            return student_out, teacher_out
        return torch.cat([student_out, teacher_out], dim=-1)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None):
        """Only the student is checkpointed; the teacher is reloaded from its source."""
        return self.student.sharded_state_dict(prefix=prefix, sharded_offsets=sharded_offsets, metadata=metadata)

    def state_dict_for_save_checkpoint(self, prefix: str = "", keep_vars: bool = False):
        return self.student.state_dict_for_save_checkpoint(prefix=prefix, keep_vars=keep_vars)
