"""CIDEr-D on tokenised text, vectorised: pycocoevalcap's `CiderScorer` arithmetic, references prepared once.

pycocoevalcap recomputes the document frequencies and every reference's tf-idf vector at each call. Here the
references' n-gram tables are built once; a call prepares only its candidates, and scores them under the
document frequencies of the whole set or of any bootstrap resample of it (a resample's idf counts an item as
often as it was drawn, as pycocoevalcap would on the resampled list). The formula, per item i with candidate
c and references r_1..r_m, n-gram orders k = 1..4 and weights w_g = log(N) - log(max(1, df_g)):

    CIDEr-D_i = 10 / m * sum_j mean_k [ sum_g min(c_g, r_jg) r_jg w_g^2 / (|c w|_k |r_j w|_k) ] * exp(-d_ij^2 / 72)

where d_ij is the difference in bigram counts (pycocoevalcap's "length"), and a term whose norm is 0 is 0.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import sparse

ORDERS = 4
SIGMA = 6.0


def ngram_counts(sentence: str) -> Counter:
    """The 1- to 4-grams of a tokenised sentence (words split on whitespace), counted."""
    words = sentence.split()
    return Counter(tuple(words[i:i + k]) for k in range(1, ORDERS + 1) for i in range(len(words) - k + 1))


def bigram_length(counts: Counter) -> int:
    """pycocoevalcap's "length" of a sentence: its number of bigrams (one less than its words)."""
    return sum(count for gram, count in counts.items() if len(gram) == 2)


@dataclass
class Candidates:
    """Candidates of some items, as sparse tables over the scorer's n-gram columns."""

    self_norm: sparse.csr_matrix  # (c * 4, ref columns): count^2, per candidate and order
    unseen_norm: np.ndarray  # (c * 4,): count^2 of the n-grams no reference has (weight log N in every resample)
    overlap: sparse.csr_matrix  # (p * 4, columns): min(count, ref count) * ref count, per (candidate, ref) and order
    pair_ref: np.ndarray  # (p,) the reference of each (candidate, reference) pair
    pair_row: np.ndarray  # (p,) its candidate
    penalty: np.ndarray  # (p,) the length penalty of each pair
    per_row: sparse.csr_matrix  # (c, p): sums a candidate's pairs, divided by its number of references


class CiderD:
    """The reference side of CIDEr-D for N items, tokenised; scores candidates of any of them."""

    def __init__(self, references: list[list[str]]):
        self.n_items = len(references)
        self.columns: dict[tuple[str, ...], int] = {}
        self.order: list[int] = []  # per n-gram column: its order - 1
        self.ref_counts: list[dict[int, int]] = []  # per reference: n-gram column -> count
        self.refs_of: list[list[int]] = []  # per item: its references' indices
        ref_lengths, doc_items, doc_columns = [], [], []
        for item, sentences in enumerate(references):
            self.refs_of.append([])
            for sentence in sentences:
                counts = ngram_counts(sentence)
                self.refs_of[-1].append(len(self.ref_counts))
                self.ref_counts.append({self._column(gram): count for gram, count in counts.items()})
                ref_lengths.append(bigram_length(counts))
            seen = sorted({column for ref in self.refs_of[-1] for column in self.ref_counts[ref]})
            doc_items += [item] * len(seen)
            doc_columns += seen
        self.ref_lengths = np.array(ref_lengths, dtype=np.float64)
        self.documents = sparse.csr_matrix((np.ones(len(doc_items)), (doc_items, doc_columns)),
                                           shape=(self.n_items, len(self.columns)))
        self.ref_norm = self._by_order(
            [(ref * ORDERS + self.order[column], column, float(count) ** 2)
             for ref, counts in enumerate(self.ref_counts) for column, count in counts.items()],
            len(self.ref_counts) * ORDERS, len(self.columns))

    def _column(self, gram: tuple[str, ...]) -> int:
        if gram not in self.columns:
            self.columns[gram] = len(self.columns)
            self.order.append(len(gram) - 1)
        return self.columns[gram]

    @staticmethod
    def _by_order(entries: list[tuple[int, int, float]], groups: int, columns: int) -> sparse.csr_matrix:
        rows, cols, values = zip(*entries) if entries else ((), (), ())
        return sparse.csr_matrix((np.array(values, dtype=np.float64), (rows, cols)), shape=(groups, columns))

    def candidates(self, rows: list[int], sentences: list[str]) -> Candidates:
        """Prepare tokenised candidate `sentences` of items `rows` (one each) for scoring."""
        self_norm, overlap, pair_ref, pair_row, penalty = [], [], [], [], []
        unseen_norm = np.zeros(len(rows) * ORDERS)
        for c, (item, sentence) in enumerate(zip(rows, sentences)):
            grams = ngram_counts(sentence)
            counts, length = {}, bigram_length(grams)
            for gram, n in grams.items():
                if gram in self.columns:
                    counts[self.columns[gram]] = n
                else:  # in no reference: it adds to the candidate's norm only, never to an overlap
                    unseen_norm[c * ORDERS + len(gram) - 1] += float(n) ** 2
            self_norm += [(c * ORDERS + self.order[column], column, float(n) ** 2) for column, n in counts.items()]
            for ref in self.refs_of[item]:
                pair, ref_counts = len(pair_ref), self.ref_counts[ref]
                overlap += [(pair * ORDERS + self.order[column], column, float(min(n, ref_counts[column]) * ref_counts[column]))
                            for column, n in counts.items() if column in ref_counts]
                pair_ref.append(ref)
                pair_row.append(c)
                delta = float(length - self.ref_lengths[ref])
                penalty.append(np.e ** (-(delta ** 2) / (2 * SIGMA ** 2)))
        columns, pairs = len(self.columns), len(pair_ref)
        weights = [1.0 / len(self.refs_of[rows[c]]) for c in pair_row]
        return Candidates(self._by_order(self_norm, len(rows) * ORDERS, columns), unseen_norm,
                          self._by_order(overlap, pairs * ORDERS, columns), np.array(pair_ref, dtype=np.int64),
                          np.array(pair_row, dtype=np.int64), np.array(penalty),
                          sparse.csr_matrix((weights, (pair_row, range(pairs))), shape=(len(rows), pairs)))

    def weights_squared(self, draws: np.ndarray | None) -> np.ndarray:
        """(n-gram columns, r): w_g^2 under each resample's document frequencies; `draws` (r, N): how often each
        item was drawn (None: the whole set once)."""
        draws = np.ones((1, self.n_items)) if draws is None else np.asarray(draws, dtype=np.float64)
        frequency = np.asarray(self.documents.T @ draws.T)  # (columns, r)
        return (np.log(float(self.n_items)) - np.log(np.maximum(1.0, frequency))) ** 2

    def scores(self, candidates: Candidates, draws: np.ndarray | None = None) -> np.ndarray:
        """(r, c): each candidate's CIDEr-D (x1, as pycocoevalcap) under each resample's idf (`weights_squared`)."""
        u = self.weights_squared(draws)
        ref_norm = np.sqrt(np.asarray(self.ref_norm @ u))  # (refs * 4, r)
        unseen = candidates.unseen_norm[:, None] * np.log(float(self.n_items)) ** 2  # their df is 0 in any resample
        self_norm = np.sqrt(np.asarray(candidates.self_norm @ u) + unseen)  # (c * 4, r)
        overlap = np.asarray(candidates.overlap @ u)  # (p * 4, r)
        r = u.shape[1]
        ref_norm = ref_norm.reshape(-1, ORDERS, r)[candidates.pair_ref]
        self_norm = self_norm.reshape(-1, ORDERS, r)[candidates.pair_row]
        overlap = overlap.reshape(-1, ORDERS, r)
        norms = self_norm * ref_norm
        cosine = np.divide(overlap, norms, out=overlap.copy(), where=(self_norm != 0) & (ref_norm != 0))
        per_pair = (cosine * candidates.penalty[:, None, None]).mean(axis=1)  # (p, r)
        return 10.0 * np.asarray(candidates.per_row @ per_pair).T
