"""The leaderboard across runs (issue 12): ratings from pairwise verdicts and rubric means, each
with an interval from a bootstrap over sequences.

    ratings.py   Bradley-Terry with ties (Davidson), fitted by maximum likelihood with scipy;
                 cluster-bootstrap intervals, rank ranges; cluster-bootstrap means
"""
