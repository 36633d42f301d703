"""Paper B (R_dm, arXiv 2603.28460) and its DMD baselines, in one place:

    distillation.py   the math: DMD's gradient and loss, the R_dm estimator, the critic's flow-matching loss
    objectives.py     objective=dmd (DMD2-style, through the student's sample) and objective=dmdr (DMD + λ·RL)
    reward.py         reward=dm: R_dm, the distribution-matching signal as a reward (GNDM, GNDMR in a mix)
    critic.py         DMD's "fake score", a learner beside the policy, shared by all of the above

The trainer knows none of these names: the objective's loss parts, the reward's `draws` and the
critic as one of `Components.learners` are all it sees (rlzoo.config.build wires the critic in).
"""
