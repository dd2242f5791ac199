from django.db import models


class Person(models.Model):
    name = models.CharField(max_length=100)
    email = models.EmailField(unique=True)
    score = models.IntegerField()

    def __str__(self):
        return self.name
