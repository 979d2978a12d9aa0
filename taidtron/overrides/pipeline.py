"""Pipeline p2p that sends only the student's half of the activation gradient backward.

Between pipeline stages the pair's activations travel as one tensor, [seq, micro_batch, h_student + h_teacher]
(`taidtron.models.pair`). The teacher half is detached on arrival, so its gradient is all zeros, yet megatron-core's
1F1B schedule sends it back: its P2PCommunicator receives a gradient in the shape the activation was sent in. For
Qwen2-72B -> 1.5B (h 8192 + 1536) that is 6.3x the bytes the backward needs.

`StudentGradCommunicator` is a P2PCommunicator (handed to the schedule through its public `p2p_communicator`
argument) whose four public methods that carry gradients send `grad[..., :h_student]` and receive that shape, then
widen it with zeros to the activation's shape for the local backward (a device-memory copy, far cheaper than the
link). Forward sends and receives are untouched.

Relies on (checked against megatron-core 0.16.1 and 0.19.2, `CHECKED_MEGATRON_CORE`): the non-interleaved
schedule calls `send_forward_recv_backward` and `recv_backward` with `tensor_shapes` that only size the received
gradient (the forward send takes the tensor's own shape), and `send_backward[_recv_forward]` with the gradient of
the received activation. Interleaved (virtual) pipelines are not used by taidtron.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn.functional as F
from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator

CHECKED_MEGATRON_CORE = ("0.16.1", "0.19.2")


def _single_shape(shapes) -> bool:
    return isinstance(shapes, (tuple, list, torch.Size)) and all(isinstance(x, int) for x in shapes)


class StudentGradCommunicator(P2PCommunicator):
    """P2P between pipeline stages whose backward direction carries [..., h_student] instead of the full width."""

    def __init__(self, pp_group, config, student_hidden: int):
        super().__init__(pp_group=pp_group, config=config)
        self.student_hidden = student_hidden
        self.full_hidden = config.hidden_size  # the pair's pipeline config: h_student + h_teacher

    def _grad_shapes(self, shapes):
        if _single_shape(shapes):
            return (*shapes[:-1], self.student_hidden)
        return [(*shape[:-1], self.student_hidden) for shape in shapes]

    def _narrow(self, grads):
        """The student's half of outgoing gradients (contiguous, as p2p needs)."""
        if isinstance(grads, list):
            return [self._narrow(g) for g in grads]
        return None if grads is None else grads[..., : self.student_hidden].contiguous()

    def _widen(self, grads):
        """Incoming [..., h_student] gradients, zero-padded to the activation's width."""
        if isinstance(grads, list):
            return [self._widen(g) for g in grads]
        return None if grads is None else F.pad(grads.detach(), (0, self.full_hidden - self.student_hidden))

    def recv_backward(self, tensor_shapes, is_last_stage: bool):
        return self._widen(super().recv_backward(self._grad_shapes(tensor_shapes), is_last_stage))

    def send_forward_recv_backward(self, output_tensors, tensor_shapes, is_last_stage: bool):
        return self._widen(
            super().send_forward_recv_backward(output_tensors, self._grad_shapes(tensor_shapes), is_last_stage)
        )

    def send_backward(self, input_tensor_grads, is_first_stage: bool) -> None:
        super().send_backward(self._narrow(input_tensor_grads), is_first_stage)

    def send_backward_recv_forward(self, input_tensor_grads, tensor_shapes, is_first_stage: bool):
        return super().send_backward_recv_forward(self._narrow(input_tensor_grads), tensor_shapes, is_first_stage)


def student_grad_schedule(config, student_hidden: int):
    """megatron-core's forward/backward function for this layout; with pipeline stages and a teacher, the 1F1B
    schedule bound to a `StudentGradCommunicator` (and the process groups megatron would take by default)."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.process_groups_config import ProcessGroupCollection

    schedule = get_forward_backward_func()
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    if pp_group.size() == 1 or student_hidden == config.hidden_size:
        return schedule
    groups = ProcessGroupCollection()
    groups.tp = parallel_state.get_tensor_model_parallel_group()
    groups.cp = parallel_state.get_context_parallel_group()
    groups.pp = pp_group
    groups.embd = parallel_state.get_embedding_group(check_initialized=False)
    groups.pos_embd = parallel_state.get_position_embedding_group(check_initialized=False)
    groups.dp_cp = parallel_state.get_data_parallel_group(with_context_parallel=True, partial_data_parallel=False)
    communicator = StudentGradCommunicator(pp_group, config, student_hidden)
    return partial(schedule, p2p_communicator=communicator, pg_collection=groups)


def pipeline_config(student_config, teacher_config=None):
    """The config megatron's schedules read from the pair: the student's, except that stage boundaries carry
    both hidden states concatenated, so p2p buffers are [seq, micro_batch, h_student + h_teacher]. Without a
    teacher: the student's own.

    A shallow copy with one field reassigned: re-running TransformerConfig's validation would reject a width
    that is not a multiple of the head count, and the width is only used to size p2p buffers."""
    if teacher_config is None:
        return student_config
    config = copy.copy(student_config)
    config.hidden_size = student_config.hidden_size + teacher_config.hidden_size
    return config
