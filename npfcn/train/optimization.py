"""How the weights move: the optimizer, the learning-rate schedule, gradient clipping."""
import math

import numpy as np


def build_optimizer(config, model):
    """SGD with momentum (and LARS on the encoder's weights) or Adam, from the config."""
    from ..optim import SGD, Adam

    if config.optimizer == "adam":
        return Adam(model, lr=config.lr, weight_decay=config.weight_decay)
    # LARS for the encoder's weights only: biases start at 0 and so do the score layers
    # (a trust ratio |w| / |grad| of 0 would keep them there), and the upsampling
    # kernels start as a fixed interpolation, not a learned feature.
    encoder_weights = [f"{name}.weight" for name in model.encoder.convs]
    return SGD(model, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
               trust_coefficient=config.lars, layerwise=encoder_weights)


def build_schedule(config, total_steps):
    """schedule(global step) -> learning rate for a run of ``total_steps`` steps."""
    from ..optim import constant_lr, linear_warmup, poly_lr

    if config.schedule == "poly":
        schedule = poly_lr(config.lr, total_steps, power=0.9)
    else:
        schedule = constant_lr(config.lr)
    if config.warmup:
        schedule = linear_warmup(schedule, max(1, round(config.warmup * total_steps)))
    return schedule


def clip_gradients(model, max_norm):
    """Scale every trainable gradient by ``max_norm / norm`` when their global L2 norm
    (over all of them together) exceeds ``max_norm``; returns the norm before clipping.

    Without batch normalisation a plain network trained from scratch with SGD sees rare
    gradient spikes (a typical norm of about 2, occasionally 10-20) that throw the
    weights back; clipping only the spikes keeps the direction of every step.
    """
    # Each squared norm as a BLAS dot product (float32 sums in vector lanes: far more
    # accurate than a threshold needs, and no float64 copy of every gradient per step).
    total = sum(float(np.vdot(model.grads[name], model.grads[name])) for name in model.trainable)
    norm = math.sqrt(total)
    if max_norm and norm > max_norm:
        factor = max_norm / norm
        for name in model.trainable:
            model.grads[name] *= model.grads[name].dtype.type(factor)
    return norm
