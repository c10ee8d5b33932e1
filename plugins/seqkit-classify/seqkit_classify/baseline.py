"""The baseline fitted in the same run: TF-IDF word unigrams and bigrams, logistic regression
(scikit-learn), trained on the same training text and scored on the same test split."""

from __future__ import annotations


def tfidf_logistic_regression(train_texts: list[str], train_labels: list, test_texts: list[str],
                              test_labels: list) -> float:
    """Test accuracy in percent (single-label data)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                          LogisticRegression(C=10.0, max_iter=2000))
    model.fit(train_texts, [str(label) for label in train_labels])
    predicted = model.predict(test_texts)
    right = sum(p == str(g) for p, g in zip(predicted, test_labels))
    return 100.0 * right / max(len(test_labels), 1)
