"""Training methods on the twin or on the model itself.

Each method is a small module with the same shape: build inputs, optimise, save ``Params`` with
provenance.

- :mod:`.ga`: the genetic algorithm of the out-of-equilibrium paper (ask/tell, checkpointed).
- :mod:`.teacher`: the small digital MNIST network whose activations the OM method imitates.
- :mod:`.om`: Onsager-Machlup teacher-student training (gradient descent or exact least squares).
- :mod:`.direct`: training through the simulated stochastic dynamics at the observation time.
"""
