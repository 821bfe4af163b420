from .assignment_hook import MGDAssignmentHook, UpdateSchedule, epoch_length, unwrap_model
from .trainer import MGDTrainer, is_mgd
