"""The card template and the cards of the zoo's published students (package data, installed as zoo.model_cards)."""
