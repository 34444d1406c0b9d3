"""What a customer wants: the classifier, its evaluation, and one message or key understood."""
