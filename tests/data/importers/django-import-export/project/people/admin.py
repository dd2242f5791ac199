from django.contrib import admin
from import_export import resources
from import_export.admin import ImportExportModelAdmin

from .models import Person


class PersonResource(resources.ModelResource):
    class Meta:
        model = Person
        fields = ("id", "name", "email", "score")
        # run the model's own validation (EmailField, unique email) in the dry run
        clean_model_instances = True


@admin.register(Person)
class PersonAdmin(ImportExportModelAdmin):
    resource_classes = [PersonResource]
    list_display = ("id", "name", "email", "score")
