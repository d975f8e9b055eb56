"""The arena: people (or an LLM judge) vote between two anonymous models' replies; the votes
give ratings. `votes` stores them (SQLite), `ratings` turns them into a leaderboard
(Bradley-Terry with bootstrap intervals, online Elo, win rates), `server` is `llmkit arena`."""

from llmkit.arena.ratings import (
    battle_counts,
    bootstrap,
    bradley_terry,
    heatmap_png,
    leaderboard,
    online_elo,
    ratings,
    win_rates,
)
from llmkit.arena.votes import WINNERS, DuplicateVote, VoteStore, load_votes, validate_vote

__all__ = [
    "WINNERS", "DuplicateVote", "VoteStore", "load_votes", "validate_vote",
    "bradley_terry", "bootstrap", "online_elo", "win_rates", "battle_counts", "heatmap_png", "leaderboard",
    "ratings",
]
