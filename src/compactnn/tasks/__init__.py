"""What the engine trains: ``compactnn train``'s classification task
(:mod:`compactnn.tasks.classify`) and ``compactnn mtl``'s multi-task
mixture-of-experts task (:mod:`compactnn.tasks.mtl`)."""
