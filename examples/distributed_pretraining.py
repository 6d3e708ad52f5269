r"""
Multi-GPU and multi-node pretraining with Accelerate or torchrun
================================================================

A command-line script, not run when the documentation is built: start it
with a launcher, which runs one copy per process (one per GPU).

.. code-block:: bash

    # one machine with 4 GPUs, bf16 mixed precision
    accelerate launch --multi_gpu --num_processes 4 \
        examples/distributed_pretraining.py --mixed-precision bf16
    # the same with PyTorch's launcher
    torchrun --nproc_per_node 4 examples/distributed_pretraining.py \
        --mixed-precision bf16

    # several machines (e.g. SLURM, one task per node, 4 GPUs each)
    srun accelerate launch --multi_gpu --num_machines $SLURM_NNODES \
        --machine_rank $SLURM_NODEID --num_processes $((4 * SLURM_NNODES)) \
        --main_process_ip $HEAD --main_process_port 29500 \
        examples/distributed_pretraining.py

    # two CPU processes (gloo) on a laptop, to try it out; without CUDA the
    # script uses the CPU by itself
    torchrun --nproc_per_node 2 examples/distributed_pretraining.py --quick
    accelerate launch --multi_gpu --num_processes 2 \
        examples/distributed_pretraining.py --quick

(``accelerate launch --cpu --num_processes 2`` starts a *single* process:
Accelerate runs several CPU processes only through MPI.)

:func:`sklearn_cl3d.distributed.accelerated` adds skorch's
``AccelerateMixin`` to :class:`~sklearn_cl3d.YAwarePretrainer`. The
``Accelerator`` reads the launcher's environment, wraps the network in
``DistributedDataParallel`` and gives every process its share of each epoch.
``batch_size`` is **per process**: with 4 processes and ``batch_size=16``, a
step sees 64 subjects. The y-Aware loss gathers the projections and the ages
of all processes (``gather_distributed=True``), so negatives and kernel
weights span those 64 subjects and the update equals that of a single process
on the whole batch; every process logs the same loss.
``sync_batchnorm=True`` (GPUs only) also computes the BatchNorm statistics
over the global batch.

Every process runs this whole script. Only the main process prints and
saves. Accelerated estimators cannot be pickled: the weights are saved with
``save_params`` and can be loaded into a plain ``YAwarePretrainer``.
"""

import argparse

import numpy as np
import torch
from accelerate import Accelerator

from sklearn_cl3d import YAwarePretrainer
from sklearn_cl3d.datasets import make_brain_cohort
from sklearn_cl3d.distributed import accelerated, world_size


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--n-subjects", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--backbone", default="densenet121")
    parser.add_argument(
        "--mixed-precision", choices=["no", "bf16", "fp16"], default="no"
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="CPU processes with gloo (implied when CUDA is not available)",
    )
    parser.add_argument("--save", default=None, help="save_params file")
    parser.add_argument(
        "--quick", action="store_true", help="small CNN, 32 subjects, 2 epochs"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n_subjects, args.batch_size, args.epochs = 32, 4, 2
        args.backbone = "small3d"
    cpu = args.cpu or not torch.cuda.is_available()

    # reads RANK/WORLD_SIZE/... from the launcher and joins the process group
    accelerator = Accelerator(cpu=cpu, mixed_precision=args.mixed_precision)

    # every process builds the same cohort; with real data, pass the list of
    # NIfTI paths instead and every process reads only the files of its share
    cohort = make_brain_cohort(args.n_subjects, random_state=0)
    X, age = cohort.volumes, cohort.age

    Pretrainer = accelerated(YAwarePretrainer)
    ssl = Pretrainer(
        accelerator=accelerator,  # places data and model: device stays None
        backbone=args.backbone,
        batch_size=args.batch_size,
        max_epochs=args.epochs,
        sync_batchnorm=not cpu,
        random_state=0,
        verbose=1,  # the accelerator prints on the main process only
    )
    ssl.fit(X, age)
    features = ssl.transform(X)  # every process gets all rows, in order

    if accelerator.is_main_process:
        print(
            f"{world_size()} process(es) x batch {args.batch_size} = global "
            f"batch {world_size() * args.batch_size}; features {features.shape}; "
            f"finite: {bool(np.isfinite(features).all())}"
        )
    if args.save:
        ssl.save_params(f_params=args.save)  # writes on the main process only
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
